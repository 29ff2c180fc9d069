"""One resolver from a model spec to a loaded model, used by the app, the CLI and the tests.

Specs:
  default            the embedded SmolLM2-135M-Instruct (converted once into the cache)
  /path/to/folder    a local transformers folder (config.json + safetensors + tokenizer),
                     including BIP Studio exports of pruned models
  /path/with/only/config.json   a randomly initialised model (seed 0) with the default tokenizer
  org/name           a Hugging Face Hub id, when the Hub is reachable (fails fast offline)

`trust_remote_code` stays off unless the caller turns it on explicitly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architecture import family_of, summary
from .default_model import DEFAULT_NAME, PROVENANCE, ensure_default_model
from .errors import ExportError, ModelSpecError
from .network import require_hub

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    path: str | None  # local folder the weights came from; None for a random model
    family: str
    note: str = ""
    extra: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {"spec": self.spec, "path": self.path, **summary(self.model), "note": self.note}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder):
    """The tokenizer saved in `folder` (pad token = eos token when it has none); ModelSpecError if absent."""
    from transformers import AutoTokenizer

    if not _has_tokenizer(folder):
        raise ModelSpecError(f"{folder} has model weights but no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                             "save the tokenizer into the folder (tokenizer.save_pretrained(folder)).")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise ModelSpecError(f"The tokenizer in {folder} cannot be loaded: {err}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{folder}/config.json cannot be read ({err}); the folder is not a valid model.") from err


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()


def random_model(config_or_folder, seed: int = 0, dtype=torch.float32):
    """A randomly initialised model of a supported family (seed 0 by default)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config_or_folder, (str, Path)):
        config = AutoConfig.from_pretrained(config_or_folder)
    else:
        config = config_or_folder
    family_of(config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _from_folder(folder: Path, spec: str, dtype, device_map, trust_remote_code) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ModelSpecError(f"{folder} has no config.json: it is not a transformers model folder.")
    raw = _read_config(folder)
    if "bip_studio" in raw:  # an export of a pruned model: its own loader checks it
        return load_export(folder, dtype=dtype, device_map=device_map)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    family = family_of(config)
    if not _has_weights(folder):
        model = random_model(config, seed=0, dtype=dtype)
        tokenizer = load_tokenizer(folder if _has_tokenizer(folder) else ensure_default_model())
        return LoadedModel(model, tokenizer, spec, None, family,
                           note="randomly initialised (seed 0) from config.json; default tokenizer")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code)
    except Exception as err:  # corrupt weights, shape mismatches, truncated files
        raise ModelSpecError(f"Could not load the weights in {folder}: {err}") from err
    model.eval()
    return LoadedModel(model, load_tokenizer(folder), spec, str(folder), family)


def load_model(spec: str = "default", dtype=torch.float32, device_map=None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Resolve `spec` (see module docstring) and load model + tokenizer in eval mode."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError("No model given. Use 'default', a local folder, or a Hub id like org/name.")
    if spec == "default":
        folder = ensure_default_model()
        loaded = _from_folder(folder, spec, dtype, device_map, False)
        loaded.note = PROVENANCE
        return loaded
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSpecError(f"{spec} is a file; give the folder that holds config.json.")
        return _from_folder(path, spec, dtype, device_map, trust_remote_code)
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or not HUB_ID.match(spec)
    if looks_local:
        raise ModelSpecError(
            f"Model '{spec}' not found: no such folder, and it is not a Hub id of the form org/name. "
            "Use 'default', an existing folder, or a Hub id.")
    require_hub(f"The Hub model '{spec}'")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:
        raise ModelSpecError(f"Could not download '{spec}' from the Hub: {err}") from err
    return _from_folder(folder, spec, dtype, device_map, trust_remote_code)


def load_export(folder, dtype=torch.float32, device_map=None, verify: bool = True) -> LoadedModel:
    """Load a BIP Studio export (checked against its manifest unless verify=False) with the project's copy of
    its modeling code; `.extra` holds "bip_studio" (config meta) and "plan". ExportError if corrupt."""
    from transformers import AutoConfig

    from .export import PLAN_FILE, is_export, verify_export
    from .modeling_bip_pruned import PRUNED_CLASSES
    from .plan import Plan

    folder = Path(folder).expanduser()
    if not is_export(folder):
        raise ExportError(f"{folder} is not a BIP Studio export (no readable config.json with a 'bip_studio' key).")
    raw = verify_export(folder) if verify else _read_config(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
        family = family_of(config)
        model = PRUNED_CLASSES[family].from_pretrained(folder, config=config, dtype=dtype, device_map=device_map)
        tokenizer = load_tokenizer(folder)
    except Exception as err:  # shape mismatches, unreadable safetensors
        raise ExportError(f"Could not load the export in {folder}: {type(err).__name__}: {err}") from err
    meta = raw["bip_studio"]
    prov = meta.get("provenance", {})
    note = (f"BIP Studio export of {prov.get('base_model')}: {prov.get('method')}, ratio {prov.get('ratio')}, "
            f"{prov.get('allocation')} allocation")
    plan = Plan.load(folder / PLAN_FILE) if (folder / PLAN_FILE).exists() else None
    return LoadedModel(model.eval(), tokenizer, str(folder), str(folder), family, note=note,
                       extra={"bip_studio": meta, "plan": plan})


__all__ = ["LoadedModel", "load_model", "load_export", "load_tokenizer", "random_model", "DEFAULT_NAME"]

"""Export a pruned model to a folder, and check such a folder against its manifest. This module only
writes; `bip_core.loading.load_export` reads an export back.

An export folder holds:

  model.safetensors (or ~2 GB    weights, no pickles
    shards + model.safetensors.index.json)
  config.json                    the family's config + `bip_layer_shapes` (per-layer sizes), an
                                 `auto_map` to the shipped modeling file, and a top-level
                                 `bip_studio` key: version, plan summary, provenance (base model,
                                 method, ratios, calibration), how it reloads
  modeling_bip_pruned.py         self-contained modeling code (torch + transformers only)
  tokenizer files, generation_config.json
  bip_plan.json                  the plan that made it
  bip_manifest.json              size and sha256 of every other file

Both ways of exporting write through `write_export`: `export_model` from a pruned model in memory,
`bip_core.streamed_export.prune_and_export` from the base model's weights. Either way the tensors
go out one at a time into safetensors shards (`weights.write_sharded`).

It reloads three ways: `bip_core.loading.load_export` (what `load_model` uses for such folders);
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` without BIP Studio; and,
when every layer has the same shape, plain `from_pretrained` without remote code, because then the
config's standard fields (num_attention_heads, num_key_value_heads, intermediate_size, head_dim)
are the pruned ones. Compensation biases fit that last way only where the family's config can
switch them on (Llama: attention_bias / mlp_bias; Qwen3: attention_bias), at the price of zero
q/k/v (and gate/up) biases in the file. Otherwise, and for layers of different shapes, the
standard fields stay those of the base model, so that a plain load fails loudly with a size
mismatch instead of silently dropping weights; `bip_studio.plain_loadable` says which case it is.

Writes are atomic: everything goes into a temporary folder beside the target, which is renamed
into place at the end; a failure leaves nothing half-written. An existing folder is replaced only
if it is itself an export (or empty).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .architecture import ATTENTION_LINEARS, MLP_LINEARS, count_params, decoder_layers, family_of, layer_geometry, \
    linear_name, linear_path
from .errors import ExportError
from .modeling_bip_pruned import LAYER_SHAPES_KEY, PRUNED_CLASSES
from .plan import Plan
from .weights import ModuleWeights, TensorEntry, write_sharded

EXPORT_VERSION = 1
MANIFEST_FILE = "bip_manifest.json"
PLAN_FILE = "bip_plan.json"
MODELING_FILE = "modeling_bip_pruned.py"
GENERATION_CONFIG_FILE = "generation_config.json"
MAX_SHARD_BYTES = 2 * 1024**3
# family -> (config flag that gives every q/k/v/o_proj a bias, flag that gives gate/up/down_proj one)
BIAS_FLAGS = {"llama": ("attention_bias", "mlp_bias"), "qwen3": ("attention_bias", None),
              "qwen2": (None, None), "mistral": (None, None)}


# ----------------------------------------------------------------------------------- shapes

def layer_shapes(model) -> list[dict]:
    """Per-layer sizes read from the modules (what `bip_layer_shapes` records)."""
    shapes = []
    for i, layer in enumerate(decoder_layers(model)):
        geom = layer_geometry(model, i)
        shapes.append({"num_heads": geom.num_attention_heads, "num_kv_heads": geom.num_key_value_heads, "head_dim": geom.head_dim,
                       "intermediate": geom.intermediate_size,
                       "o_proj_bias": layer.self_attn.o_proj.bias is not None,
                       "down_proj_bias": layer.mlp.down_proj.bias is not None})
    return shapes


def _invalid_fields(config, shape: dict) -> str | None:
    """Why the family's config class refuses the pruned standard fields (e.g. Llama wants hidden_size a
    multiple of num_attention_heads), or None."""
    trial = copy.deepcopy(config)
    trial.num_attention_heads, trial.num_key_value_heads = shape["num_heads"], shape["num_kv_heads"]
    trial.intermediate_size, trial.head_dim = shape["intermediate"], shape["head_dim"]
    try:
        getattr(trial, "validate_architecture", lambda: None)()
    except ValueError as err:
        return str(err)
    return None


def _plain_layout(config, family: str, shapes: list[dict]) -> tuple[bool, dict, str]:
    """(plain_loadable, config flags to set, reason). Plain = every layer alike and biases expressible."""
    sizes = {(s["num_heads"], s["num_kv_heads"], s["intermediate"]) for s in shapes}
    if len(sizes) != 1 or shapes[0]["num_heads"] == 0:
        return False, {}, "layers have different shapes (or no attention head): load with trust_remote_code=True"
    invalid = _invalid_fields(config, shapes[0])
    if invalid:
        return False, {}, f"the family's config refuses the pruned sizes ({invalid}): load with trust_remote_code=True"
    attention_flag, mlp_flag = BIAS_FLAGS[family]
    flags = {}
    for flag, key, default in ((attention_flag, "o_proj_bias", False), (mlp_flag, "down_proj_bias", False)):
        built_with_bias = bool(getattr(config, flag, default)) if flag else default
        if any(s[key] for s in shapes) and not built_with_bias:
            if flag is None:
                return False, {}, (f"{family} has no config flag for a {key.split('_bias')[0]} bias (bias "
                                   "compensation): load with trust_remote_code=True")
            flags[flag] = True
    return True, flags, "every layer has the same shape: plain from_pretrained works"


# ----------------------------------------------------------------------------------- tensors

def _zero_biases(model, tensors, flags: dict) -> dict[str, TensorEntry]:
    """Zero biases for the Linears that a config flag gives a bias but the pruned model has none."""
    linears = ((ATTENTION_LINEARS if flags.get("attention_bias") else ())
               + (MLP_LINEARS if flags.get("mlp_bias") else ()))
    zeros = {}
    for i, layer in enumerate(decoder_layers(model)):
        for linear in linears:
            lin = layer.get_submodule(linear_path(linear))
            if lin.bias is None:
                name = linear_name(i, linear, "bias")
                zeros[name] = TensorEntry(name, (lin.out_features,), tensors.dtype(linear_name(i, linear)))
    return zeros


def export_tensors(model, tensors, flags: dict) -> tuple[list[TensorEntry], Callable[[str], torch.Tensor]]:
    """What the export's safetensors hold: `model`'s parameters by state-dict name (a tied one once, as
    transformers saves them; shapes from `model`, which may be a skeleton on the meta device, dtypes and
    values from the weight source `tensors`), plus the zero biases the config `flags` call for."""
    entries, seen = [], set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in seen:
            seen.add(id(value))
            entries.append(TensorEntry(name, tuple(value.shape), tensors.dtype(name)))
    zeros = _zero_biases(model, tensors, flags)

    def fetch(name: str) -> torch.Tensor:
        zero = zeros.get(name)
        return torch.zeros(zero.shape, dtype=zero.dtype) if zero is not None else tensors.get(name)

    return entries + list(zeros.values()), fetch


# ----------------------------------------------------------------------------------- manifest

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"version": EXPORT_VERSION, "files": files}, indent=1))


def verify_export(folder) -> dict:
    """Check every file against the manifest; returns the parsed config.json. Raises ExportError."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ExportError(f"{folder} is not a complete BIP Studio export: its manifest {MANIFEST_FILE} is missing or "
                          f"unreadable ({err}). Export the pruned model again.") from err
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{folder} is incomplete: {name} is missing. Export the pruned model again.")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ExportError(f"{folder}/{name} is truncated or changed: {size} bytes, the export wrote "
                              f"{expected['bytes']}. Export the pruned model again.")
        if _sha256(path) != expected["sha256"]:
            raise ExportError(f"{folder}/{name} is corrupt: its checksum differs from the one the export wrote. "
                              "Export the pruned model again.")
    return json.loads((folder / "config.json").read_text())


# ----------------------------------------------------------------------------------- export

def is_export(folder) -> bool:
    """Whether `folder` holds a config.json with a top-level 'bip_studio' key (a BIP Studio export)."""
    try:
        return "bip_studio" in json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _check_target(folder: Path) -> None:
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or is_export(folder))):
        raise ExportError(f"{folder} exists and is not a BIP Studio export; refusing to overwrite it. "
                          "Choose a new folder (or an old export to replace).")


def _move_into_place(tmp: Path, folder: Path) -> None:
    _check_target(folder)
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.rename(folder, old / "export")
    try:
        os.rename(tmp, folder)
    except OSError:
        os.rename(old / "export", folder)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _atomically(folder, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a fresh temporary folder beside `folder`, then rename it into place; on any
    failure the temporary folder is removed and `folder` is left as it was."""
    folder = Path(folder).expanduser().resolve()
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _bip_studio_meta(model, plan: Plan, provenance: dict | None, plain: bool, reason: str) -> dict:
    meta = plan.meta
    provenance = dict(provenance or {})
    provenance.setdefault("base_model", (meta.get("calibration") or {}).get("model")
                          or getattr(model.config, "_name_or_path", None))
    provenance.setdefault("method", meta.get("method"))
    provenance.setdefault("ratio", meta.get("ratio"))
    provenance.setdefault("allocation", meta.get("allocation"))
    provenance.setdefault("layer_ratios", meta.get("layer_ratios"))
    provenance.setdefault("calibration", meta.get("calibration"))
    provenance.setdefault("bias_compensation", bool(getattr(model.config, "bip_bias_compensation", False)))
    return {"version": EXPORT_VERSION, "params": count_params(model), "plan_summary": plan.summary(),
            "provenance": provenance, "plain_loadable": plain, "plain_load_note": reason,
            "standard_fields": "pruned" if plain else "base", "layer_shapes_key": LAYER_SHAPES_KEY,
            "manifest": MANIFEST_FILE, "plan_file": PLAN_FILE}


def _config_json(model, plan: Plan, provenance: dict | None, dtype: torch.dtype) -> tuple[dict, dict]:
    """(config.json contents, config flags that switch biases on) of the export of `model`."""
    family = family_of(model.config)
    shapes = layer_shapes(model)
    plain, flags, reason = _plain_layout(model.config, family, shapes)
    config = copy.deepcopy(model.config)  # what save_pretrained would write, without touching the model
    config.dtype = str(dtype).split(".")[1]
    config.architectures = [PRUNED_CLASSES[family].__name__.removeprefix("Bip")]
    raw = json.loads(config.to_json_string())
    raw[LAYER_SHAPES_KEY] = shapes
    raw["head_dim"] = shapes[0]["head_dim"]
    base = plan.geometry()[0]
    size = shapes[0] if plain else {"num_heads": base.num_attention_heads, "num_kv_heads": base.num_key_value_heads,
                                    "intermediate": base.intermediate_size}
    raw.update({"num_attention_heads": size["num_heads"], "num_key_value_heads": size["num_kv_heads"],
                "intermediate_size": size["intermediate"], **flags})
    raw["auto_map"] = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{PRUNED_CLASSES[family].__name__}"}
    raw["bip_studio"] = _bip_studio_meta(model, plan, provenance, plain, reason)
    return raw, flags


def _write(folder: Path, model, tensors, tokenizer, plan: Plan, provenance: dict | None, max_shard_bytes: int,
           generation_config) -> None:
    dtype = next((d for d in map(tensors.dtype, model.state_dict()) if d.is_floating_point), torch.float32)
    config, flags = _config_json(model, plan, provenance, dtype)  # dtype: the first floating tensor's, as HF
    entries, fetch = export_tensors(model, tensors, flags)
    write_sharded(folder, entries, fetch, max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if generation_config is not None:
        generation_config.save_pretrained(folder)
    shutil.copyfile(Path(__file__).with_name(MODELING_FILE), folder / MODELING_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    plan.save(folder / PLAN_FILE)
    _write_manifest(folder)
    folder.chmod(0o755)  # temporary files and folders are private; the export is an ordinary folder
    for path in folder.iterdir():
        path.chmod(0o644)


def write_export(model, tensors, tokenizer, plan: Plan, folder, provenance: dict | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES, generation_config=None) -> Path:
    """Write an export of the pruned `model` atomically; returns the folder.

    `model` gives the structure (names, shapes, config; a skeleton on the meta device will do), the weight
    source `tensors` (`.get(name)`, `.dtype(name)`, as in bip_core.weights) the values, one at a time;
    `generation_config` (a transformers GenerationConfig) is saved when given."""
    return _atomically(folder, lambda tmp: _write(tmp, model, tensors, tokenizer, plan, provenance,
                                                  max_shard_bytes, generation_config))


def export_model(model, tokenizer, plan: Plan, folder, provenance: dict | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write the pruned `model` (+ tokenizer, plan, provenance) to `folder` atomically; returns the folder."""
    generation_config = model.generation_config if model.can_generate() else None
    return write_export(model, ModuleWeights(model), tokenizer, plan, folder, provenance, max_shard_bytes,
                        generation_config)


__all__ = ["export_model", "write_export", "export_tensors", "verify_export", "is_export", "layer_shapes",
           "EXPORT_VERSION", "MAX_SHARD_BYTES"]

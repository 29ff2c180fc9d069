"""Export a pruned model to a folder, and load such a folder back (checked against its manifest).

An export folder holds:

  model.safetensors (or shards)  weights, no pickles
  config.json                    the family's config + `bip_layer_shapes` (per-layer sizes), an
                                 `auto_map` to the shipped modeling file, and a top-level
                                 `bip_studio` key: version, plan summary, provenance (base model,
                                 method, ratios, calibration), how it reloads
  modeling_bip_pruned.py         self-contained modeling code (torch + transformers only)
  tokenizer files, generation_config.json
  bip_plan.json                  the plan that made it
  bip_manifest.json              size and sha256 of every other file

It reloads three ways: `load_export` (what `bip_core.loading.load_model` uses for such folders);
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

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .architecture import count_params, decoder_layers, family_of, layer_geometry
from .errors import ExportError
from .modeling_bip_pruned import LAYER_SHAPES_KEY, PRUNED_CLASSES
from .plan import Plan

EXPORT_VERSION = 1
MANIFEST_FILE = "bip_manifest.json"
PLAN_FILE = "bip_plan.json"
MODELING_FILE = "modeling_bip_pruned.py"
# family -> (config flag that gives every q/k/v/o_proj a bias, flag that gives gate/up/down_proj one)
BIAS_FLAGS = {"llama": ("attention_bias", "mlp_bias"), "qwen3": ("attention_bias", None),
              "qwen2": (None, None), "mistral": (None, None)}
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------------- shapes

def layer_shapes(model) -> list[dict]:
    """Per-layer sizes read from the modules (what `bip_layer_shapes` records)."""
    shapes = []
    for i, layer in enumerate(decoder_layers(model)):
        geom = layer_geometry(model, i)
        shapes.append({"num_heads": geom.num_heads, "num_kv_heads": geom.num_kv_heads, "head_dim": geom.head_dim,
                       "intermediate": geom.intermediate,
                       "o_proj_bias": layer.self_attn.o_proj.bias is not None,
                       "down_proj_bias": layer.mlp.down_proj.bias is not None})
    return shapes


def _plain_layout(model, family: str, shapes: list[dict]) -> tuple[bool, dict, str]:
    """(plain_loadable, config flags to set, reason). Plain = every layer alike and biases expressible."""
    sizes = {(s["num_heads"], s["num_kv_heads"], s["intermediate"]) for s in shapes}
    if len(sizes) != 1 or shapes[0]["num_heads"] == 0:
        return False, {}, "layers have different shapes (or no attention head): load with trust_remote_code=True"
    attention_flag, mlp_flag = BIAS_FLAGS[family]
    config, flags = model.config, {}
    for flag, key, default in ((attention_flag, "o_proj_bias", False), (mlp_flag, "down_proj_bias", False)):
        built_with_bias = bool(getattr(config, flag, default)) if flag else default
        if any(s[key] for s in shapes) and not built_with_bias:
            if flag is None:
                return False, {}, (f"{family} has no config flag for a {key.split('_bias')[0]} bias (bias "
                                   "compensation): load with trust_remote_code=True")
            flags[flag] = True
    return True, flags, "every layer has the same shape: plain from_pretrained works"


def _state_dict(model, flags: dict) -> dict:
    """The model's tensors, plus zero biases where a config flag switched biases on for all Linears."""
    state = dict(model.state_dict())
    names = ()
    if flags.get("attention_bias"):
        names += tuple(f"self_attn.{n}" for n in ATTENTION_LINEARS)
    if flags.get("mlp_bias"):
        names += tuple(f"mlp.{n}" for n in MLP_LINEARS)
    prefix = "model.layers"
    for i, layer in enumerate(decoder_layers(model)):
        for name in names:
            lin = layer.get_submodule(name)
            if lin.bias is None:
                state[f"{prefix}.{i}.{name}.bias"] = torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                                   device=lin.weight.device)
    return state


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

def _is_export(folder: Path) -> bool:
    try:
        return "bip_studio" in json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _check_target(folder: Path) -> None:
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or _is_export(folder))):
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


def _write(model, tokenizer, plan: Plan, folder: Path, provenance: dict | None) -> None:
    family = family_of(model.config)
    shapes = layer_shapes(model)
    plain, flags, reason = _plain_layout(model, family, shapes)
    model.save_pretrained(folder, state_dict=_state_dict(model, flags))
    stray = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if stray:
        raise ExportError(f"Refusing to export pickled weights ({stray}); only safetensors are written.")

    config = json.loads((folder / "config.json").read_text())
    config[LAYER_SHAPES_KEY] = shapes
    config["head_dim"] = shapes[0]["head_dim"]
    base = plan.meta["geometry"][0]
    size = shapes[0] if plain else {"num_heads": base["num_heads"], "num_kv_heads": base["num_kv_heads"],
                                    "intermediate": base["intermediate"]}
    config.update({"num_attention_heads": size["num_heads"], "num_key_value_heads": size["num_kv_heads"],
                   "intermediate_size": size["intermediate"], **flags})
    config["auto_map"] = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{PRUNED_CLASSES[family].__name__}"}
    config["bip_studio"] = _bip_studio_meta(model, plan, provenance, plain, reason)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))

    shutil.copyfile(Path(__file__).with_name(MODELING_FILE), folder / MODELING_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    plan.save(folder / PLAN_FILE)
    _write_manifest(folder)
    folder.chmod(0o755)  # temporary files and folders are private; the export is an ordinary folder
    for path in folder.iterdir():
        path.chmod(0o644)


def export_model(model, tokenizer, plan: Plan, folder, provenance: dict | None = None) -> Path:
    """Write the pruned `model` (+ tokenizer, plan, provenance) to `folder` atomically; returns the folder."""
    folder = Path(folder).expanduser().resolve()
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _write(model, tokenizer, plan, tmp, provenance)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ----------------------------------------------------------------------------------- load

def load_export(folder, dtype=torch.float32, device_map=None, verify: bool = True, max_memory=None,
                offload_folder=None):
    """Load an export (checked against its manifest) with the project's copy of its modeling code;
    device_map / max_memory / offload_folder as transformers' from_pretrained takes them."""
    from .loading import LoadedModel, _load_tokenizer

    folder = Path(folder).expanduser()
    if not _is_export(folder):
        raise ExportError(f"{folder} is not a BIP Studio export (no readable config.json with a 'bip_studio' key).")
    raw = verify_export(folder) if verify else json.loads((folder / "config.json").read_text())
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
        family = family_of(config)
        model = PRUNED_CLASSES[family].from_pretrained(folder, config=config, dtype=dtype, device_map=device_map,
                                                       max_memory=max_memory, offload_folder=offload_folder)
        tokenizer = _load_tokenizer(folder)
    except ExportError:
        raise
    except Exception as err:  # shape mismatches, unreadable safetensors
        raise ExportError(f"Could not load the export in {folder}: {type(err).__name__}: {err}") from err
    meta = raw["bip_studio"]
    prov = meta.get("provenance", {})
    note = (f"BIP Studio export of {prov.get('base_model')}: {prov.get('method')}, ratio {prov.get('ratio')}, "
            f"{prov.get('allocation')} allocation")
    plan = Plan.load(folder / PLAN_FILE) if (folder / PLAN_FILE).exists() else None
    return LoadedModel(model.eval(), tokenizer, str(folder), str(folder), family, note=note,
                       extra={"bip_studio": meta, "plan": plan})


__all__ = ["export_model", "load_export", "verify_export", "layer_shapes", "EXPORT_VERSION"]

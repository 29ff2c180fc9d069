"""One resolver from a model spec to a loaded model, used by the app, the CLI and the tests.

Specs:
  default            the embedded SmolLM2-135M-Instruct (converted once into the cache)
  /path/to/folder    a local transformers folder (config.json + safetensors + tokenizer),
                     including BIP Studio exports of pruned models
  /path/with/only/config.json   a randomly initialised model (seed 0) with the default tokenizer
  org/name           a Hugging Face Hub id, when the Hub is reachable (fails fast offline)

`trust_remote_code` stays off unless the caller turns it on explicitly.

Where and how (docs/CONTRACTS.md, "Scale"): `device` / `dtype` ("auto" by default: CUDA and bfloat16
when a GPU supports it), `max_memory` / `offload_folder` (accelerate spreads the model), and
`pipeline`: "whole" (in memory), "layerwise" (a meta skeleton whose tensors `.weights` gives one at a
time) or "auto" (whole when the memory guard, bip_core.memory_guard, says it fits). Nothing is loaded
before the guard has compared the weights' bytes (safetensors headers or a meta skeleton) with what
is free, so a model too large ends in a ModelTooLargeError, not an out-of-memory kill.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architecture import family_of, input_device, summary
from .devices import dtype_name, parse_max_memory, resolve_device, resolve_dtype
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
    weights: object = None  # where the tensors live (bip_core.weights); ModuleWeights(model) by default
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where computation runs
    dtype: torch.dtype = torch.float32
    pipeline: str = "whole"  # "whole": weights in memory; "layerwise": a meta skeleton fed from .weights

    def __post_init__(self):
        if self.weights is None:
            from .weights import ModuleWeights

            self.weights = ModuleWeights(self.model)

    def info(self) -> dict:
        return {"spec": self.spec, "path": self.path, **summary(self.model), "device": str(self.device),
                "dtype": dtype_name(self.dtype), "pipeline": self.pipeline, "note": self.note}


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
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype))
    return model.eval()


# ----------------------------------------------------------------------------------- where and how

@dataclass(frozen=True)
class LoadOptions:
    """Resolved placement: compute device, dtype, accelerate's budget, and the pipeline asked for."""

    device: torch.device
    dtype: torch.dtype
    max_memory: dict | None = None
    offload_folder: str | None = None
    pipeline: str = "auto"
    device_map: object = None  # an explicit accelerate/transformers device_map (skips the memory guard)
    trust_remote_code: bool = False

    @property
    def spread(self) -> bool:
        """Placement by accelerate (device_map) rather than the whole model on one device."""
        return self.device_map is not None or bool(self.max_memory) or self.offload_folder is not None

    def placement(self) -> dict:
        """from_pretrained's device_map / max_memory / offload_folder keywords."""
        if self.spread:
            return {"device_map": self.device_map or "auto", "max_memory": self.max_memory,
                    "offload_folder": self.offload_folder}
        return {"device_map": None if self.device.type == "cpu" else str(self.device)}


def load_options(dtype="auto", device="auto", max_memory=None, offload_folder=None, pipeline="auto",
                 device_map=None, trust_remote_code: bool = False) -> LoadOptions:
    """LoadOptions from user-level values ("auto", "cuda:1", "cpu=8GiB", a torch.dtype, ...)."""
    from .memory_guard import PIPELINES

    if pipeline not in PIPELINES:
        raise ValueError(f"Unknown pipeline '{pipeline}': use one of {', '.join(PIPELINES)}.")
    resolved = resolve_device(device)
    return LoadOptions(resolved, resolve_dtype(dtype, resolved), parse_max_memory(max_memory),
                       str(Path(offload_folder).expanduser()) if offload_folder else None, pipeline, device_map,
                       trust_remote_code)


def _cover_tokenizer(config, tokenizer) -> str:
    """Grow a random model's vocabulary to the tokenizer's (token ids past vocab_size crash embedding)."""
    if config.vocab_size >= len(tokenizer):
        return ""
    old, config.vocab_size = config.vocab_size, len(tokenizer)
    return f"; vocab_size raised from {old} to {config.vocab_size} to cover the tokenizer"


# ----------------------------------------------------------------------------------- one kind each

def _pretrained_whole(folder: Path, config, options: LoadOptions):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=options.dtype, **options.placement(),
                                                     trust_remote_code=options.trust_remote_code)
    except Exception as err:  # corrupt weights, shape mismatches, truncated files
        raise ModelSpecError(f"Could not load the weights in {folder}: {err}") from err
    return model.eval()


def _random_whole(folder: Path, config, options: LoadOptions):
    model = random_model(config, seed=0, dtype=options.dtype)
    return model if options.device.type == "cpu" else model.to(options.device)


WHOLE = {"pretrained": _pretrained_whole, "random": _random_whole}  # exports: load_export


def _kind(folder: Path) -> str:
    if "bip_studio" in _read_config(folder):
        return "export"  # an export of a pruned model: its own loader checks it
    return "pretrained" if _has_weights(folder) else "random"


def _source(kind: str, folder: Path, config, options: LoadOptions):
    """(weight source, size, skeleton or None) without loading a weight."""
    from .model_size import size_of_model, size_of_weights
    from .random_weights import RandomWeights
    from .skeleton import empty_model
    from .weights import open_weights

    if kind == "random":
        skeleton = empty_model(config, options.dtype)
        return RandomWeights(config, 0, options.dtype, skeleton=skeleton), size_of_model(skeleton), skeleton
    try:
        weights = open_weights(folder)
    except ModelSpecError:
        raise
    except Exception as err:  # a truncated or corrupt safetensors header
        raise ModelSpecError(f"Could not load the weights in {folder}: unreadable safetensors "
                             f"({type(err).__name__}: {err}). Save the model again.") from err
    return weights, size_of_weights(weights), None


def pipeline_for(kind: str, size, options: LoadOptions) -> str:
    """The pipeline a load takes ("whole" or "layerwise"); ModelTooLargeError when neither fits."""
    from .memory_guard import choose_pipeline

    if options.device_map is not None:
        return "whole"  # the caller placed the model itself
    offload = None if kind == "random" else options.offload_folder  # a random model is made in memory
    return choose_pipeline(size, options.dtype, options.device, options.pipeline, options.max_memory, offload)


def _random_tokenizer(folder: Path, config) -> tuple[object, str]:
    """A config-only folder's tokenizer (its own, else the default) and the note saying so."""
    own = _has_tokenizer(folder)
    tokenizer = load_tokenizer(folder if own else ensure_default_model())
    note = f"randomly initialised (seed 0) from config.json; {'its own' if own else 'default'} tokenizer"
    return tokenizer, note + _cover_tokenizer(config, tokenizer)


@dataclass
class FolderModel:
    """What a folder holds, read without loading a weight: kind, config, tokenizer, weights, size."""

    folder: Path
    kind: str  # "pretrained", "random" (config only) or "export"
    config: object
    family: str
    weights: object
    size: object  # model_size.ModelSize
    skeleton: torch.nn.Module | None
    tokenizer: object
    note: str


def inspect_folder(folder: Path, options: LoadOptions) -> FolderModel:
    """Everything but the weights (a config-only model's vocabulary grown to its tokenizer's)."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ModelSpecError(f"{folder} has no config.json: it is not a transformers model folder.")
    kind = _kind(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    family = family_of(config)
    tokenizer, note = _random_tokenizer(folder, config) if kind == "random" else (None, "")
    weights, size, skeleton = _source(kind, folder, config, options)
    return FolderModel(folder, kind, config, family, weights, size, skeleton, tokenizer, note)


def skeleton_model(found: FolderModel, spec: str, options: LoadOptions) -> LoadedModel:
    """The layer-wise LoadedModel: a meta skeleton whose tensors are read from `.weights`."""
    from .skeleton import empty_model

    model = found.skeleton if found.skeleton is not None else empty_model(found.config, options.dtype)
    tokenizer = found.tokenizer if found.tokenizer is not None else load_tokenizer(found.folder)
    note = "; ".join(filter(None, [found.note, "layer-wise: weights are read one decoder layer at a time"]))
    extra = {"bip_studio": _read_config(found.folder)["bip_studio"]} if found.kind == "export" else {}
    return LoadedModel(model, tokenizer, spec, None if found.kind == "random" else str(found.folder), found.family,
                       note, extra, weights=found.weights, device=options.device, dtype=options.dtype,
                       pipeline="layerwise")


def whole_model(found: FolderModel, spec: str, options: LoadOptions) -> LoadedModel:
    """The model in memory (on the device, or spread by accelerate)."""
    if found.kind == "export":
        loaded = load_export(found.folder, dtype=options.dtype, **options.placement())
        loaded.weights, loaded.dtype, loaded.device = found.weights, options.dtype, input_device(loaded.model)
        return loaded
    model = WHOLE[found.kind](found.folder, found.config, options)
    tokenizer = found.tokenizer if found.tokenizer is not None else load_tokenizer(found.folder)
    random = found.kind == "random"
    return LoadedModel(model, tokenizer, spec, None if random else str(found.folder), found.family, found.note,
                       weights=None if random else found.weights,  # None: ModuleWeights(model)
                       device=input_device(model), dtype=options.dtype, pipeline="whole")


BUILD = {"whole": whole_model, "layerwise": skeleton_model}


def resolve_folder(spec: str) -> Path:
    """The local folder a spec names (the default model converted, a Hub id downloaded)."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError("No model given. Use 'default', a local folder, or a Hub id like org/name.")
    if spec == "default":
        return ensure_default_model()
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSpecError(f"{spec} is a file; give the folder that holds config.json.")
        return path
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or not HUB_ID.match(spec)
    if looks_local:
        raise ModelSpecError(
            f"Model '{spec}' not found: no such folder, and it is not a Hub id of the form org/name. "
            "Use 'default', an existing folder, or a Hub id.")
    require_hub(f"The Hub model '{spec}'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:
        raise ModelSpecError(f"Could not download '{spec}' from the Hub: {err}") from err


def load_export(folder, dtype=torch.float32, device_map=None, verify: bool = True, max_memory=None,
                offload_folder=None) -> LoadedModel:
    """Load a BIP Studio export (checked against its manifest unless verify=False) with the project's copy of
    its modeling code (device_map / max_memory / offload_folder as from_pretrained takes them); `.extra` holds "bip_studio" (config meta) and "plan". ExportError if corrupt."""
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
        model = PRUNED_CLASSES[family].from_pretrained(folder, config=config, dtype=dtype, device_map=device_map,
                                                       max_memory=max_memory, offload_folder=offload_folder)
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


def load_model(spec: str = "default", dtype="auto", device="auto", max_memory=None, offload_folder=None,
               pipeline: str = "auto", trust_remote_code: bool = False, *, device_map=None) -> LoadedModel:
    """Resolve `spec` (see module docstring) and load model + tokenizer in eval mode.

    dtype: auto | float32 | bfloat16 | float16 or a torch.dtype; device: auto | cpu | cuda | cuda:N;
    max_memory ("cpu=8GiB,cuda:0=20GiB" or accelerate's dict) / offload_folder: spread by accelerate;
    pipeline: whole | layerwise | auto (whole when the memory guard says it fits, else layer-wise);
    device_map: an explicit transformers device_map (no guard). Raises ModelTooLargeError when the
    model fits neither way."""
    options = load_options(dtype, device, max_memory, offload_folder, pipeline, device_map,
                           trust_remote_code and spec.strip() != "default")
    found = inspect_folder(resolve_folder(spec), options)
    loaded = BUILD[pipeline_for(found.kind, found.size, options)](found, spec.strip(), options)
    if spec.strip() == "default":
        loaded.note = "; ".join(filter(None, [PROVENANCE, loaded.note if loaded.pipeline == "layerwise" else ""]))
    return loaded


__all__ = ["LoadedModel", "LoadOptions", "FolderModel", "load_model", "load_export", "load_tokenizer", "load_options", "inspect_folder",
           "skeleton_model", "whole_model", "pipeline_for", "resolve_folder", "random_model", "DEFAULT_NAME"]

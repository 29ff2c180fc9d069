"""`info` without loading a weight: the architecture card from a meta skeleton, the bytes each dtype
needs (whole, and resident in the layer-wise pipeline), and what the memory guard would decide here.

Sizes come from safetensors headers when the folder has weights, else from the skeleton's parameter
shapes; nothing is allocated but the skeleton's small CPU buffers (rotary frequencies).
"""
from __future__ import annotations

from .default_model import PROVENANCE
from .errors import ModelTooLargeError
from .loading import inspect_folder, load_options, pipeline_for, resolve_folder, skeleton_model


def _decision(found, options) -> dict:
    try:
        return {"pipeline": pipeline_for(found.kind, found.size, options), "refusal": None}
    except ModelTooLargeError as err:
        return {"pipeline": None, "refusal": str(err)}


def describe(spec: str = "default", dtype="auto", device="auto", max_memory=None, offload_folder=None,
             pipeline: str = "auto", trust_remote_code: bool = False) -> dict:
    """The architecture card plus `memory` (bytes per dtype, fits) and the pipeline a load would take."""
    from .devices import dtype_name
    from .memory_guard import HEADROOM, MARGIN, assess

    options = load_options(dtype, device, max_memory, offload_folder, pipeline, None,
                           trust_remote_code and spec.strip() != "default")
    found = inspect_folder(resolve_folder(spec), options)
    info = skeleton_model(found, spec.strip(), options).info()
    offload = None if found.kind == "random" else options.offload_folder
    info.update(_decision(found, options))
    info["note"] = PROVENANCE if spec.strip() == "default" else found.note
    info["kind"] = found.kind
    info["memory"] = {**found.size.report(), "dtype": dtype_name(options.dtype),
                      "fit": assess(found.size, options.dtype, options.device, options.max_memory, offload),
                      "margin": f"weights x {MARGIN} + {HEADROOM // 2**30} GiB (without --max-memory)"}
    return info


__all__ = ["describe"]

"""Will the model fit? Decided before anything is loaded, so a model too large for this machine ends in
one readable `ModelTooLargeError` (exit code 2 in the CLI), never an allocator traceback or an OOM kill.

Budget: what is free now on the device the weights go to: RAM (MemAvailable) for the CPU, free GPU
memory (`torch.cuda.mem_get_info`) for a GPU. With `--max-memory` the budget is the sum of the given
sizes (each capped by what is free there), plus the free disk under `--offload-folder` when one is
given (accelerate then spreads the model; it does not need the margin below).

Safety margin: a model fits when `weights * 1.2 + 1 GiB <= free`. The 20% covers the loader's
transient copies and the tokenizer, the 1 GiB the activations and statistics of a calibration or
evaluation batch at the default sizes.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .devices import dtype_name
from .errors import ModelTooLargeError
from .model_size import ModelSize

MARGIN = 1.2
HEADROOM = 2**30
_MEMINFO = Path("/proc/meminfo")


def required_bytes(weight_bytes: int) -> int:
    """Weights plus the safety margin (module docstring)."""
    return int(weight_bytes * MARGIN) + HEADROOM


def available_ram() -> int:
    """Bytes of RAM a new allocation can get without swapping (MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown platform: do not refuse


def free_bytes(device) -> int:
    """Free memory where `device` keeps tensors (RAM, a GPU's free memory, the disk under a folder)."""
    if isinstance(device, int):
        device = torch.device("cuda", device)
    if isinstance(device, torch.device) and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else 0
    if device in ("cpu", "mps") or isinstance(device, torch.device):
        return available_ram()
    return shutil.disk_usage(Path(device)).free  # a folder


def _budget(max_memory: dict, offload_folder) -> int:
    where = {"cpu": "cpu", "mps": "mps"}
    total = sum(min(size, free_bytes(where.get(key, key))) for key, size in max_memory.items() if key != "disk")
    if offload_folder is not None:
        folder = Path(offload_folder).expanduser()
        total += free_bytes(next((p for p in [folder, *folder.parents] if p.exists()), Path.cwd()))
    return total


def _visible_memory() -> dict:
    """What accelerate may fill when no --max-memory is given: every visible GPU and the RAM."""
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
    return {**{index: free_bytes(index) for index in gpus}, "cpu": available_ram()}


@dataclass(frozen=True)
class Fit:
    """Whether `need` bytes fit in `free` bytes of `where`."""

    need: int
    free: int
    where: str

    @property
    def fits(self) -> bool:
        return self.need <= self.free

    def to_dict(self) -> dict:
        return {"fits": self.fits, "need_bytes": self.need, "free_bytes": self.free, "where": self.where}


def whole_fit(size: ModelSize, dtype, device, max_memory=None, offload_folder=None) -> Fit:
    """Does the whole model fit, on `device` or spread by accelerate within `max_memory` / offload?"""
    weights = size.bytes(dtype)
    if max_memory or offload_folder:
        spread = dict(max_memory or _visible_memory())
        return Fit(weights, _budget(spread, offload_folder), "--max-memory" + (" + offload" if offload_folder else ""))
    return Fit(required_bytes(weights), free_bytes(device), str(device))


def layerwise_fit(size: ModelSize, dtype, device) -> Fit:
    """Does the layer-wise pipeline's resident set (largest layer + embeddings + head) fit on `device`?"""
    return Fit(required_bytes(size.layerwise_bytes(dtype)), free_bytes(device), str(device))


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _ways_out(size: ModelSize, dtype, tried: str, fit: Fit) -> str:
    ways = []
    if fit.where.startswith("--max-memory"):
        ways.append("raise --max-memory" + ("" if "offload" in fit.where else
                                            ", or add --offload-folder DIR so accelerate puts the rest on disk"))
    if size.bytes(torch.bfloat16) < size.bytes(dtype):
        ways.append(f"load it in bfloat16 (--dtype bfloat16: {gib(size.bytes(torch.bfloat16))} of weights)")
    if tried != "layerwise":
        ways.append(f"use the layer-wise pipeline for score and prune (--pipeline layerwise: "
                    f"{gib(size.layerwise_bytes(dtype))} resident)")
    if not fit.where.startswith("--max-memory"):
        ways.append("let accelerate spread it over GPU, CPU and disk (e.g. --max-memory cpu=8GiB,cuda:0=20GiB "
                    "--offload-folder DIR)")
    return "; ".join(ways)


def too_large(size: ModelSize, dtype, fit: Fit, tried: str) -> ModelTooLargeError:
    """The error for a model that does not fit, naming what would."""
    if tried == "layerwise":
        what = f"the layer-wise pipeline holds {gib(size.layerwise_bytes(dtype))} of {dtype_name(dtype)} weights"
    else:
        what = f"the model has {gib(size.bytes(dtype))} of {dtype_name(dtype)} weights"
    if fit.where.startswith("--max-memory"):
        room = f"{fit.where} allows {gib(fit.free)}"
    else:
        what += f" and needs {gib(fit.need)} with the safety margin (x{MARGIN} + {HEADROOM // 2**30} GiB)"
        room = f"{fit.where} has {gib(fit.free)} free"
    return ModelTooLargeError(f"Not enough memory: {what}, but {room}. Ways out: {_ways_out(size, dtype, tried, fit)}.")


PIPELINES = ("auto", "whole", "layerwise")


def choose_pipeline(size: ModelSize, dtype, device, pipeline: str = "auto", max_memory=None,
                    offload_folder=None) -> str:
    """'whole' or 'layerwise' for `pipeline` (auto: whole when it fits); raises ModelTooLargeError."""
    if pipeline not in PIPELINES:
        raise ValueError(f"Unknown pipeline '{pipeline}': use one of {', '.join(PIPELINES)}.")
    whole = whole_fit(size, dtype, device, max_memory, offload_folder)
    if pipeline == "whole" or (pipeline == "auto" and whole.fits):
        if not whole.fits:
            raise too_large(size, dtype, whole, "whole")
        return "whole"
    layerwise = layerwise_fit(size, dtype, device)
    if not layerwise.fits:
        raise too_large(size, dtype, layerwise, "layerwise")
    return "layerwise"


def assess(size: ModelSize, dtype, device, max_memory=None, offload_folder=None) -> dict:
    """Both fits, for `info`: {"whole": Fit.to_dict(), "layerwise": Fit.to_dict()}."""
    return {"whole": whole_fit(size, dtype, device, max_memory, offload_folder).to_dict(),
            "layerwise": layerwise_fit(size, dtype, device).to_dict()}


__all__ = ["choose_pipeline", "assess", "whole_fit", "layerwise_fit", "required_bytes", "available_ram",
           "free_bytes", "Fit", "PIPELINES", "MARGIN", "HEADROOM"]

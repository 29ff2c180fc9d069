"""Peak memory of a piece of work, measured the cheapest honest way the platform allows.

    with PeakMemory() as memory:
        work()
    memory.result()  # {"peak_memory_bytes", "memory_at_start_bytes", "peak_memory_kind"}

- CUDA model: `torch.cuda.max_memory_allocated`, summed over the visible devices, after resetting the
  peak counters (tensors allocated by torch, weights included; not the caching allocator's slack).
- CPU on Linux: the process's peak resident set (VmHWM in /proc/self/status) after resetting it
  through /proc/self/clear_refs, so the peak belongs to this piece of work. Weights and everything
  else resident count too: `memory_at_start_bytes` says what was already there.
- Elsewhere: `resource.getrusage(...).ru_maxrss`, the process's lifetime peak; it only reflects the
  work if the work set a new peak, and the kind says so.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """Context manager measuring the peak memory of its body (see the module docstring)."""

    def __init__(self, cuda: bool | None = None):
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.start = self.peak = 0
        self.kind = ""

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            for device in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(device)
            self.start = sum(torch.cuda.memory_allocated(d) for d in range(torch.cuda.device_count()))
            self.kind = "torch.cuda.max_memory_allocated, summed over GPUs (weights included)"
        elif _status_kib("VmRSS") is not None and _reset_peak_rss():
            self.start = _status_kib("VmRSS") * 1024
            self.kind = "peak resident set of the process (VmHWM, reset at start; weights included)"
        else:
            self.start = _ru_maxrss_bytes()
            self.kind = "lifetime peak resident set of the process (ru_maxrss; only a new peak shows)"
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
        elif self.kind.startswith("peak resident"):
            self.peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self.peak = _ru_maxrss_bytes()

    def result(self) -> dict:
        return {"peak_memory_bytes": int(self.peak), "memory_at_start_bytes": int(self.start),
                "peak_memory_kind": self.kind}

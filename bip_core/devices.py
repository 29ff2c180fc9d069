"""Device, dtype and memory budget from the strings users type (CLI flags, BIP_DEVICE / BIP_DTYPE).

    resolve_device("auto")                -> cuda:0 when CUDA is available, else cpu
    resolve_dtype("auto", device)         -> bfloat16 on a GPU that supports it, else float32
    parse_max_memory("cpu=8GiB,cuda:0=20GiB") -> {0: 21474836480, "cpu": 8589934592}

`parse_max_memory` returns accelerate's form (GPU indices as ints, "cpu", "mps", "disk"; sizes in
bytes), ready for `from_pretrained(..., device_map="auto", max_memory=...)`. A GPU that cannot do
bfloat16 gets float32 under "auto" (float16 overflows too easily to be a silent default).
"""
from __future__ import annotations

import re

import torch

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)
_MEMORY_EXAMPLE = ("e.g. --max-memory cpu=8GiB,cuda:0=20GiB (devices: cpu, disk, mps, cuda, cuda:N; "
                   "units B, MB, GB, MiB, GiB)")


def _cuda_index(text: str) -> int:
    index = text.partition(":")[2] or "0"
    if not index.isdigit():
        raise DeviceError(f"Unknown device '{text}': use one of auto, cpu, cuda, cuda:N (N a GPU number).")
    return int(index)


def resolve_device(name="auto") -> torch.device:
    """auto | cpu | cuda | cuda:N (or a torch.device) -> torch.device; CUDA must be there when asked for."""
    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text != "cuda" and not text.startswith("cuda:"):
        raise DeviceError(f"Unknown device '{name}': use one of auto, cpu, cuda, cuda:N.")
    index = _cuda_index(text)
    if not torch.cuda.is_available():
        raise DeviceError(f"Device '{name}' asked for, but CUDA is not available on this machine: "
                          "use --device cpu (or auto).")
    if index >= torch.cuda.device_count():
        raise DeviceError(f"Device '{name}' asked for, but this machine has {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return torch.device("cuda", index)


def _bf16_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name="auto", device=None) -> torch.dtype:
    """auto | float32 | bfloat16 | float16 (or a torch.dtype) -> torch.dtype; auto depends on `device`."""
    if isinstance(name, torch.dtype):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.bfloat16 if _bf16_ok(resolve_device(device or "auto")) else torch.float32
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    text = aliases.get(text, text)
    if text not in DTYPES:
        raise DeviceError(f"Unknown dtype '{name}': use one of {', '.join(DTYPE_CHOICES)}.")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_size(text: str) -> int:
    """'8GiB' -> 8589934592, '500MB' -> 500000000, '1024' -> 1024 (bytes)."""
    match = _SIZE.match(text or "")
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise DeviceError(f"Cannot read a memory size from '{text}': {_MEMORY_EXAMPLE}.")
    return int(float(match.group(1)) * UNITS[unit])


def _memory_key(device: str):
    device = device.strip().lower()
    if device in ("cpu", "disk", "mps"):
        return device
    if device.isdigit():
        return int(device)
    if device == "cuda" or device.startswith("cuda:"):
        return _cuda_index(device)
    raise DeviceError(f"Unknown device '{device}' in --max-memory: {_MEMORY_EXAMPLE}.")


def parse_max_memory(text) -> dict | None:
    """'cpu=8GiB,cuda:0=20GiB' -> {0: bytes, 'cpu': bytes} (accelerate's form); None/'' -> None.

    A dict is accepted too (its sizes may be strings)."""
    if text is None or isinstance(text, dict):
        return None if not text else {_memory_key(str(k)): v if isinstance(v, int) else parse_size(str(v))
                                      for k, v in text.items()}
    memory = {}
    for item in (part for part in text.split(",") if part.strip()):
        device, sep, size = item.partition("=")
        if not sep or not device.strip():
            raise DeviceError(f"Cannot read '{item}' in --max-memory: write DEVICE=SIZE, {_MEMORY_EXAMPLE}.")
        memory[_memory_key(device)] = parse_size(size)
    return memory or None


__all__ = ["resolve_device", "resolve_dtype", "parse_max_memory", "parse_size", "dtype_name", "DEVICES",
           "DTYPES", "DTYPE_CHOICES"]

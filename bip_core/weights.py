"""Where a model's tensors live, read one at a time, and safetensors written one tensor at a time.

    weights = open_weights(folder)      # a folder of safetensors (model.safetensors, or shards + index)
    weights = ModuleWeights(model)      # a model in memory (accelerate-offloaded parameters included)
    w = weights.get("model.layers.0.self_attn.q_proj.weight", device="cuda", dtype=torch.bfloat16)
    weights.shape(name), weights.dtype(name), weights.names()

    write_safetensors(path, entries, fetch)   # header first, then each tensor as `fetch(name)` makes it
    write_sharded(folder, entries, fetch, max_shard_bytes)  # HF shard names + model.safetensors.index.json

Reading goes through `safetensors.safe_open`, one file handle per call, so no shard stays mapped
into the process (a mapped page counts in its resident set). Writing needs only the names, shapes
and dtypes up front: the safetensors header is computed from them and tensors are streamed in, so
neither a whole model nor a whole shard is ever held in memory.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .errors import ModelSpecError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Name, shape and dtype of a tensor to be written."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


def _cast(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    return tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype)


# ----------------------------------------------------------------------------------- reading

def read_header(path: Path) -> dict:
    """The JSON header of one safetensors file (name -> {dtype, shape, data_offsets}, __metadata__)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


class FolderWeights:
    """The tensors of a folder of safetensors files (single file or shards with an index)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.files: dict[str, Path] = {}
        self.headers: dict[str, dict] = {}
        for file in self._shard_files():
            header = read_header(file)
            for name, info in header.items():
                if name != "__metadata__":
                    self.files[name], self.headers[name] = file, info
        if not self.files:
            raise ModelSpecError(f"{self.folder} holds no safetensors weights.")

    def _shard_files(self) -> list[Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [self.folder / name for name in sorted(set(weight_map.values()))]
        return sorted(self.folder.glob("*.safetensors"))

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.headers[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return CODE_DTYPES[self.headers[name]["dtype"]]

    def nbytes(self) -> int:
        return sum(TensorEntry(n, self.shape(n), self.dtype(n)).nbytes for n in self.files)

    def get(self, name: str, device=None, dtype=None) -> torch.Tensor:
        """A fresh tensor (not a view of a mapped file), on `device` in `dtype` when given."""
        from safetensors import safe_open

        if name not in self.files:
            raise KeyError(f"{name} is not in the safetensors files of {self.folder}")
        with safe_open(self.files[name], framework="pt", device="cpu") as f:
            tensor = f.get_tensor(name).clone()
        return _cast(tensor, device, dtype)


class StateDictWeights:
    """Names and shapes from a module's state dict (`self.state`); subclasses say how tensors are made."""

    state: dict

    def names(self) -> list[str]:
        return list(self.state)

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)


class ModuleWeights(StateDictWeights):
    """The tensors of a model in memory, by state-dict name (offloaded parameters are materialised)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.state = model.state_dict(keep_vars=True)

    def dtype(self, name: str) -> torch.dtype:
        return self.state[name].dtype

    def get(self, name: str, device=None, dtype=None) -> torch.Tensor:
        from accelerate.utils import align_module_device

        module_name, _, attr = name.rpartition(".")
        module = self.model.get_submodule(module_name)
        with align_module_device(module):
            tensor = getattr(module, attr).detach()
            if tensor.device.type == "meta":
                return tensor
            out = _cast(tensor, device, dtype)
            return out.clone() if out.data_ptr() == tensor.data_ptr() else out  # a copy either way, made once


def open_weights(folder) -> FolderWeights:
    return FolderWeights(folder)


# ----------------------------------------------------------------------------------- writing

def _header(entries: list[TensorEntry], metadata: dict | None) -> bytes:
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for entry in entries:
        header[entry.name] = {"dtype": DTYPE_CODES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned


def write_safetensors(path, entries: Iterable[TensorEntry], fetch: Callable[[str], torch.Tensor],
                      metadata: dict | None = None) -> int:
    """Write one safetensors file, asking `fetch(name)` for each tensor in turn; returns its bytes."""
    entries = list(entries)
    header = _header(entries, metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for entry in entries:
            tensor = fetch(entry.name)
            if tuple(tensor.shape) != tuple(entry.shape) or tensor.dtype != entry.dtype:
                raise ValueError(f"{entry.name}: expected {entry.dtype} {tuple(entry.shape)}, "
                                 f"got {tensor.dtype} {tuple(tensor.shape)}")
            raw = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
            f.write(memoryview(raw.numpy()))  # the tensor's own bytes, not a copy of them
        return f.tell()


def shard(entries: list[TensorEntry], max_shard_bytes: int) -> list[list[TensorEntry]]:
    """Consecutive groups of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards, current, size = [], [], 0
    for entry in entries:
        if current and size + entry.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.nbytes
    return shards + ([current] if current else [])


def write_sharded(folder, entries: Iterable[TensorEntry], fetch: Callable[[str], torch.Tensor],
                  max_shard_bytes: int = 2 * 1024**3, metadata: dict | None = None) -> list[str]:
    """Write `entries` into `folder` as HF does: model.safetensors, or model-0000i-of-0000n.safetensors
    and model.safetensors.index.json. Returns the file names written."""
    folder = Path(folder)
    groups = shard(list(entries), max_shard_bytes)
    metadata = {"format": "pt", **(metadata or {})}
    if len(groups) == 1:
        write_safetensors(folder / SINGLE_FILE, groups[0], fetch, metadata)
        return [SINGLE_FILE]
    names, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, group, fetch, metadata)
        names.append(name)
        weight_map.update({entry.name: name for entry in group})
    total = sum(entry.nbytes for group in groups for entry in group)
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
    return names + [INDEX_FILE]


__all__ = ["FolderWeights", "ModuleWeights", "StateDictWeights", "TensorEntry", "open_weights", "read_header", "write_safetensors",
           "write_sharded", "shard", "INDEX_FILE", "SINGLE_FILE"]

"""Where refit o_proj / down_proj tensors wait between the calibration pass and the pruned model:
in memory, or (for a model larger than memory) in one safetensors file per layer in a temporary folder.

    with RefitFiles() as refit:                  # or RefitMemory()
        refit.put(i, {"o_proj": (weight, bias), "down_proj": (weight, bias)})
        refit[i]        # the same dict (read back from its file), None for a layer never put
        refit.keys(i)   # {"o_proj.weight", "o_proj.bias", ...}, read from the file's header only
        len(refit)      # one past the last layer put
    # the folder is gone (also on error, and at the latest when the store is garbage-collected)

Both read like the per-layer list `surgery.prune_model(..., refit=...)` takes. A file is written
beside its final name and renamed, so a layer is either complete or absent.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from .errors import ExportError
from .weights import TensorEntry, read_header, write_safetensors

Fitted = dict  # {"o_proj": (weight [out, kept], bias [out] or None), "down_proj": (...)}


def fitted_tensors(fitted: Fitted | None) -> dict[str, torch.Tensor]:
    """{"o_proj.weight": ..., "o_proj.bias": ...} of a layer's refit (no entry for an absent bias)."""
    tensors = {}
    for name, (weight, bias) in (fitted or {}).items():
        tensors[f"{name}.weight"] = weight
        if bias is not None:
            tensors[f"{name}.bias"] = bias
    return tensors


def _fitted(tensors: dict[str, torch.Tensor]) -> Fitted:
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    return {name: (tensors[f"{name}.weight"], tensors.get(f"{name}.bias")) for name in names}


class RefitMemory:
    """The refit tensors of every layer, on the CPU."""

    def __init__(self):
        self.layers: dict[int, Fitted] = {}

    def put(self, i: int, fitted: Fitted) -> None:
        self.layers[i] = {name: (w.detach().cpu(), None if b is None else b.detach().cpu())
                          for name, (w, b) in fitted.items()}

    def __getitem__(self, i: int) -> Fitted | None:
        return self.layers.get(i)

    def keys(self, i: int) -> set[str]:
        return set(fitted_tensors(self[i]))

    def __len__(self) -> int:
        return max(self.layers, default=-1) + 1

    def close(self) -> None:
        self.layers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RefitFiles(RefitMemory):
    """The refit tensors of every layer in `folder` (default: a new temporary folder, removed by close())."""

    def __init__(self, folder=None):
        super().__init__()
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="bip-refit-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def _path(self, i: int) -> Path:
        return self.folder / f"layer-{i:05d}.safetensors"

    def put(self, i: int, fitted: Fitted) -> None:
        tensors = {key: t.detach().cpu().contiguous() for key, t in fitted_tensors(fitted).items()}
        entries = [TensorEntry(key, tuple(t.shape), t.dtype) for key, t in tensors.items()]
        partial = self._path(i).with_suffix(".partial")
        try:
            write_safetensors(partial, entries, tensors.__getitem__)
            os.replace(partial, self._path(i))
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise ExportError(f"Could not write layer {i}'s refit weights to {self.folder}: {error}. Free disk "
                              "space there (or set TMPDIR to a larger disk).") from error
        self.count = max(self.count, i + 1)

    def __getitem__(self, i: int) -> Fitted | None:
        from safetensors import safe_open

        path = self._path(i)
        if not path.is_file():
            return None
        with safe_open(path, framework="pt", device="cpu") as f:  # fresh tensors, no mapping kept
            return _fitted({key: f.get_tensor(key).clone() for key in f.keys()})

    def keys(self, i: int) -> set[str]:
        path = self._path(i)
        return {key for key in read_header(path) if key != "__metadata__"} if path.is_file() else set()

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        self._cleanup()


__all__ = ["RefitMemory", "RefitFiles", "fitted_tensors"]

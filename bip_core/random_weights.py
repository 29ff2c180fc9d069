"""Random weights made on demand, one tensor at a time: the weight source of a config-only model that
is run layer-wise (bip_core.weights has the same interface for safetensors folders and models).

    weights = RandomWeights(config, seed=0, dtype=torch.bfloat16)
    weights.get("model.layers.3.mlp.down_proj.weight")   # the same numbers on every call

Each tensor is drawn from a generator seeded by (seed, tensor name), so a layer can be made, dropped
and made again without ever holding the model. Initialisation follows transformers' for these
families: linear and embedding weights N(0, initializer_range), norms 1, biases 0. The numbers are
*not* those of `random_model(config, seed)` (which draws every tensor from one global stream in
construction order): a config-only model run layer-wise and the same one loaded whole score alike in
distribution, not bit for bit.
"""
from __future__ import annotations

import zlib

import torch

_ONES = ("norm.weight", "layernorm.weight")


class RandomWeights:
    """Weight source for a randomly initialised `config` (names and shapes from its meta skeleton)."""

    def __init__(self, config, seed: int = 0, dtype: torch.dtype = torch.float32, skeleton=None):
        from .skeleton import empty_model

        model = skeleton if skeleton is not None else empty_model(config, dtype)
        self.seed, self.dtype_ = seed, dtype
        self.std = float(getattr(config, "initializer_range", 0.02))
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.aliases: dict[str, str] = {}  # tied parameter name -> the name it is drawn under
        first: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            self.aliases[name] = first.setdefault(id(param), name)
            self.shapes[name] = tuple(param.shape)

    def names(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        return self.dtype_

    def get(self, name: str, device=None, dtype=None) -> torch.Tensor:
        """The tensor `name`, made afresh from its own seed, on `device` in `dtype` when given."""
        if name not in self.shapes:
            raise KeyError(f"{name} is not a parameter of this model")
        drawn_as = self.aliases[name]
        shape = self.shapes[name]
        if drawn_as.endswith(_ONES):
            tensor = torch.ones(shape)
        elif drawn_as.endswith(".bias"):
            tensor = torch.zeros(shape)
        else:
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{drawn_as}".encode()))
            tensor = torch.randn(shape, generator=generator) * self.std
        return tensor.to(device=device or "cpu", dtype=dtype or self.dtype_)


__all__ = ["RandomWeights"]

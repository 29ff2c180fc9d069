"""How many bytes a model needs, from parameter shapes alone (a meta skeleton or safetensors headers).

`ModelSize` splits the parameters into decoder layers and the rest (embeddings, final norm, LM head),
so it answers both questions the loaders ask: the whole model in a dtype, and the layer-wise
pipeline's resident set (the largest decoder layer plus the rest, which stays loaded throughout).
Tied embeddings count once (the skeleton's parameters are deduplicated; safetensors store them once).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .devices import DTYPES

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelSize:
    layer_params: tuple[int, ...]  # parameters of each decoder layer
    other_params: int  # embeddings, final norm, LM head

    @property
    def params(self) -> int:
        return sum(self.layer_params) + self.other_params

    def bytes(self, dtype: torch.dtype) -> int:
        """The whole model's weights in `dtype`."""
        return self.params * _element_size(dtype)

    def layerwise_bytes(self, dtype: torch.dtype) -> int:
        """Weights resident in the layer-wise pipeline: the largest layer plus embeddings, norm and head."""
        return (max(self.layer_params, default=0) + self.other_params) * _element_size(dtype)

    def report(self) -> dict:
        """Bytes per dtype, whole and layer-wise (what `info` prints)."""
        return {"params": self.params, "largest_layer_params": max(self.layer_params, default=0),
                "embeddings_and_head_params": self.other_params,
                "weight_bytes": {name: self.bytes(dtype) for name, dtype in DTYPES.items()},
                "layerwise_bytes": {name: self.layerwise_bytes(dtype) for name, dtype in DTYPES.items()}}


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _split(counts) -> ModelSize:
    layers: dict[int, int] = {}
    other = 0
    for name, numel in counts:
        match = _LAYER.search(name)
        if match:
            layers[int(match.group(1))] = layers.get(int(match.group(1)), 0) + numel
        else:
            other += numel
    return ModelSize(tuple(layers.get(i, 0) for i in range(max(layers, default=-1) + 1)), other)


def size_of_model(model: torch.nn.Module) -> ModelSize:
    """From a model's parameters (meta ones included), tied parameters once."""
    return _split((name, p.numel()) for name, p in model.named_parameters())


def size_of_weights(weights) -> ModelSize:
    """From a weight source (bip_core.weights: names and shapes, e.g. safetensors headers)."""
    return _split((name, math.prod(weights.shape(name))) for name in weights.names())


__all__ = ["ModelSize", "size_of_model", "size_of_weights"]

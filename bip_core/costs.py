"""The cost model of a plan: how many parameters each attention unit and MLP channel removes.

One attention unit costs its q rows, k/v rows (KV groups and MHA heads only) and o_proj columns,
with their biases; one MLP channel costs a row of gate_proj and up_proj and a column of down_proj.
A layer's attention+MLP parameters are the weights and biases of q/k/v/o_proj and
gate/up/down_proj, as `architecture.count_params` counts them. When a layer loses all its attention
units, the rest of q/k/v/o_proj goes too (the k/v heads under query slots; o_proj's bias stays),
and so do its other attention parameters (Qwen3's q_norm / k_norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .architecture import ATTENTION_LINEARS, LINEARS, LayerGeometry, block_parts, count_params


def _size(linear) -> int:
    return linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)


def _has_bias(linear) -> int:
    return int(linear.bias is not None)


@dataclass(frozen=True)
class Costs:
    """Parameter bookkeeping of a model for one unit kind (per-layer numpy arrays, length L)."""

    units: np.ndarray         # attention units per layer
    channels: np.ndarray      # MLP channels per layer
    unit_cost: np.ndarray     # parameters removed with one attention unit
    channel_cost: np.ndarray  # parameters removed with one MLP channel
    layer_params: np.ndarray  # attention+MLP parameters of the layer
    total: int                # all parameters of the model, tied embeddings once
    # freed only when a layer's attention goes entirely (see the module docstring)
    attention_rest: np.ndarray | None = None
    attention_norms: np.ndarray | None = None

    @classmethod
    def of_model(cls, model, unit: str, geometry: list[LayerGeometry]) -> "Costs":
        rows = [_layer_costs(model, i, geom, unit) for i, geom in enumerate(geometry)]
        columns = [np.asarray(column, dtype=np.int64) for column in zip(*rows)]
        return cls(*columns[:5], total=count_params(model)["total"], attention_rest=columns[5],
                   attention_norms=columns[6])

    def to_dict(self) -> dict:
        return {"unit": self.unit_cost.tolist(), "channel": self.channel_cost.tolist(),
                "layer_params": self.layer_params.tolist(), "total": int(self.total),
                "attention_rest": self.attention_rest.tolist(), "attention_norms": self.attention_norms.tolist()}

    @classmethod
    def from_dict(cls, d: dict, geometry: list[LayerGeometry], unit: str) -> "Costs":
        def ints(key):
            return np.asarray(d.get(key, [0] * len(geometry)), dtype=np.int64)

        return cls(units=np.asarray([g.num_units(unit) for g in geometry], dtype=np.int64),
                   channels=np.asarray([g.intermediate_size for g in geometry], dtype=np.int64),
                   unit_cost=ints("unit"), channel_cost=ints("channel"), layer_params=ints("layer_params"),
                   total=int(d["total"]), attention_rest=ints("attention_rest"), attention_norms=ints("attention_norms"))

    def removed(self, kept_units: np.ndarray, kept_channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per layer (attention+MLP parameters removed, other parameters removed) for these kept counts."""
        empty = kept_units == 0
        linear = ((self.units - kept_units) * self.unit_cost + (self.channels - kept_channels) * self.channel_cost
                  + np.where(empty, self.attention_rest, 0))
        return linear, np.where(empty, self.attention_norms, 0)


def _layer_costs(model, i: int, geom: LayerGeometry, unit: str) -> tuple[int, ...]:
    """(units, channels, unit_cost, channel_cost, layer_params, attention_rest, attention_norms) of layer i."""
    p = block_parts(model, i)
    q_heads, kv_heads = geom.unit_heads(unit, 0)
    hd, hidden = geom.head_dim, geom.hidden_size
    units = geom.num_units(unit)
    unit_cost = (len(q_heads) * hd * (2 * hidden + _has_bias(p.q_proj))
                 + len(kv_heads) * hd * (2 * hidden + _has_bias(p.k_proj) + _has_bias(p.v_proj)))
    channel_cost = 3 * hidden + _has_bias(p.gate_proj) + _has_bias(p.up_proj)
    size = {name: _size(getattr(p, name)) for name in LINEARS}
    o_bias = p.o_proj.bias.numel() if p.o_proj.bias is not None else 0
    rest = sum(size[n] for n in ATTENTION_LINEARS) - o_bias - units * unit_cost
    norms = sum(x.numel() for norm in (p.q_norm, p.k_norm) if norm is not None for x in norm.parameters())
    return units, geom.intermediate_size, unit_cost, channel_cost, sum(size.values()), rest, norms


__all__ = ["Costs"]

"""Which channels make up an attention unit, and per-channel values summed per unit.

A query head k owns channels k*head_dim .. (k+1)*head_dim-1 of q_proj's rows and of o_proj's
columns; a kv head owns the same range of k_proj's and v_proj's rows. A unit (architecture.UNIT_KINDS)
owns its query heads' channels and, for "head" and "kv_group", its kv heads' channels.
"""
from __future__ import annotations

import torch

from ..architecture import LayerGeometry


def head_channels(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def unit_channels(geometry: LayerGeometry, unit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(query channels [units, q_per_unit], kv channels [units, kv_per_unit]) as index tensors."""
    q, kv = [], []
    for u in range(geometry.num_units(unit)):
        q_heads, kv_heads = geometry.unit_heads(unit, u)
        q.append(head_channels(q_heads, geometry.head_dim))
        kv.append(head_channels(kv_heads, geometry.head_dim))
    width = len(q[0]) if q else 0, len(kv[0]) if kv else 0  # a layer can have no attention left
    return (torch.tensor(q, dtype=torch.long).reshape(len(q), width[0]),
            torch.tensor(kv, dtype=torch.long).reshape(len(kv), width[1]))


def unit_query_heads(geometry: LayerGeometry, unit: str) -> list[int]:
    """All query heads, unit by unit (unit 0's heads first)."""
    return [h for u in range(geometry.num_units(unit)) for h in geometry.unit_heads(unit, u)[0]]


def per_unit(query_values: torch.Tensor, geometry: LayerGeometry, unit: str,
             kv_values: torch.Tensor | None = None, reduce: str = "sum") -> torch.Tensor:
    """Per-channel values [heads*head_dim] (and optionally [kv_heads*head_dim]) -> one per unit.

    reduce="sum" adds the unit's query channels and, if given, its kv channels;
    reduce="mean" averages its query channels (kv values are not allowed then)."""
    q_index, kv_index = unit_channels(geometry, unit)
    values = query_values.cpu()[q_index]  # [units, q_per_unit]
    if reduce == "mean":
        if kv_values is not None:
            raise ValueError("reduce='mean' takes query channels only")
        return values.mean(1)
    total = values.sum(1)
    if kv_values is not None and kv_index.numel():
        total = total + kv_values.cpu()[kv_index].sum(1)
    return total

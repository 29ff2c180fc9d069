"""Scaling a manual plan to a new overall ratio: what the Ratio slider does in the manual allocation.

Every layer's (attention, MLP) removed ratios are multiplied by one common factor, each capped at what
the layer can give (an attention unit kept unless whole sub-blocks may go, one MLP channel always), so
the layers keep their proportions and the plan removes `target` of the attention+MLP parameters (as
closely as whole units and channels allow). Pure arithmetic on a plan's own bookkeeping
(`plan.meta["costs"]` and `plan.summary()["layers"]`): no scores, no model.
"""
from __future__ import annotations

import numpy as np


def _arrays(plan, summary: dict):
    costs = plan.meta["costs"]
    layers = summary["layers"]
    units = np.array([layer["attention_total"] for layer in layers], dtype=np.float64)
    channels = np.array([layer["mlp_total"] for layer in layers], dtype=np.float64)
    weights = np.stack([units * np.asarray(costs["unit"], dtype=np.float64),
                        channels * np.asarray(costs["channel"], dtype=np.float64)], axis=1)
    return units, channels, weights, float(np.sum(costs["layer_params"]))


def scale_to(plan, summary: dict, target: float, allow_empty_attention: bool = False) -> tuple[list, bool]:
    """(per-layer [attention, mlp] ratios that remove about `target`, whether the target was reachable)."""
    units, channels, weights, total = _arrays(plan, summary)
    pairs = np.asarray(plan.meta["layer_ratios"], dtype=np.float64)
    caps = np.stack([np.where(units > 0, (units - (0 if allow_empty_attention else 1)) / np.maximum(units, 1), 0),
                     (channels - 1) / channels], axis=1)

    def removed(factor: float) -> float:
        return float((np.minimum(pairs * factor, caps) * weights).sum() / total)

    if removed(1.0) <= 0:  # nothing removed yet: start from the same share everywhere
        pairs = np.ones_like(pairs)
    hi = 1.0
    while removed(hi) < target and hi < 1e6:
        hi *= 2
    if removed(hi) < target:
        return np.minimum(pairs * hi, caps).tolist(), False
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < target else (lo, mid)
    return np.minimum(pairs * hi, caps).tolist(), True

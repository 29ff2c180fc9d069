"""Allocation rules: how many attention units and MLP channels every layer keeps (METHOD.md section 3).

An allocation maps a `Request` (scores, costs, ratio, constraints) to kept counts per layer;
`ALLOCATORS` dispatches on its name. Which units a layer keeps is then always its top-scored ones
(`top`). The rules:

  uniform     every layer removes `ratio` of its attention+MLP parameters: attention the nearest
              whole number of units to `ratio` of its units, the MLP the channels that make up the
              rest of the layer's share, so the global ratio holds to about a channel per layer even
              with only 3 KV groups per layer. Skipped first/last layers keep everything; the others
              remove more so that the global ratio still holds (an error if they cannot).
  global      one ranking of every unit and channel of all layers by
              score / block output_scale (when the scores have it) / parameters removed.
  global-energy  one ranking by (score / block output_scale)^2 / parameters removed. Squared
              block-output changes of units whose directions are uncorrelated add up
              (E||sum_j d_j||^2 ~ sum_j E||d_j||^2), while their norms do not (removing n channels of
              score s changes the block by about sqrt(n) s, not n s). Ranking norms per parameter
              therefore over-charges the many small MLP channels against the few large attention
              units; ranking energies does not.
  global-std  FLAP's ranking: scores standardised per layer and sub-block, (s - mean) / std (with
              the layer's recorded `standardisation` statistics when the scores have them, as FLAP
              scores do), one ranking; units weigh their parameter count when the budget is filled.
  manual      per-layer (attention_ratio, mlp_ratio) pairs, e.g. `plan.meta["layer_ratios"]` of
              another plan edited with sliders.

The global rankings differ only in their priority function (`PRIORITIES`: lower goes first); a new
ranking is one entry there, any other rule one entry in `ALLOCATORS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .costs import Costs
from .errors import PlanError


@dataclass(frozen=True)
class Request:
    """What an allocation rule decides from."""

    attention: list[np.ndarray]   # per layer: one score per attention unit
    mlp: list[np.ndarray]         # per layer: one score per MLP channel
    layers: list[dict]            # the scores' per-layer entries (output_scale, standardisation, ...)
    costs: Costs
    ratio: float | None           # fraction of attention+MLP parameters to remove (None: manual)
    active: np.ndarray            # bool per layer: may be pruned (not skipped)
    min_units: int                # attention units every layer keeps (0 or 1)
    layer_ratios: object = None   # manual: (attention_ratio, mlp_ratio) per layer

    @property
    def output_scale(self) -> np.ndarray | None:
        """Per-layer block output scale when every layer records one."""
        scale = [layer.get("output_scale") for layer in self.layers]
        return np.asarray(scale, dtype=np.float64) if all(s is not None for s in scale) else None


def nearest(x) -> np.ndarray:
    """Round half up (so 1.5 units -> 2), as integers."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def round_channels(keep: np.ndarray, channels: np.ndarray, round_to: int) -> np.ndarray:
    """Kept channel counts rounded to a multiple of round_to (a layer left whole stays whole)."""
    if round_to <= 1:
        return keep
    top_ = (channels // round_to) * round_to
    rounded = np.clip(nearest(keep / round_to) * round_to, round_to, np.maximum(top_, round_to))
    return np.where(keep >= channels, channels, np.minimum(rounded, channels))


def active_layers(n_layers: int, skip_first: int, skip_last: int) -> np.ndarray:
    active = np.ones(n_layers, dtype=bool)
    active[:skip_first] = False
    active[n_layers - skip_last:] = False
    return active


def top(scores: np.ndarray, k: int) -> list[int]:
    """Sorted indices of the k highest scores."""
    if k >= scores.size:
        return list(range(scores.size))
    if k <= 0:
        return []
    return np.sort(np.argpartition(-scores, k - 1)[:k]).tolist()


# ----------------------------------------------------------------------------------- uniform

def uniform_counts(req: Request):
    """Kept (units, channels) per layer: every active layer removes the same share of its params."""
    costs, ratio, active, min_units = req.costs, req.ratio, req.active, req.min_units
    share = ratio * costs.layer_params.sum() / costs.layer_params[active].sum()
    max_removable = (costs.units - min_units) * costs.unit_cost + (costs.channels - 1) * costs.channel_cost
    short = active & (share * costs.layer_params > max_removable + costs.channel_cost / 2)
    if short.any():
        skipped = int((~active).sum())
        raise PlanError(
            f"Uniform ratio {ratio:g} is impossible{f' with {skipped} layers skipped' if skipped else ''}: layer "
            f"{int(np.flatnonzero(short)[0])} would have to remove {share:.1%} of its attention+MLP parameters while "
            f"keeping {'an attention unit and ' if min_units else ''}an MLP channel. Lower the ratio or skip fewer layers.")
    removed_units = np.minimum(nearest(share * costs.units), costs.units - min_units)
    budget = share * costs.layer_params - removed_units * costs.unit_cost
    removed_channels = np.clip(nearest(budget / costs.channel_cost), 0, costs.channels - 1)
    keep_units = np.where(active, costs.units - removed_units, costs.units)
    keep_channels = np.where(active, costs.channels - removed_channels, costs.channels)
    return keep_units, keep_channels


# ----------------------------------------------------------------------------------- global rankings

def _standardise(s: np.ndarray, stats=None) -> np.ndarray:
    """(s - mean) / std over the layer's scores, or with the scores' recorded [mean, std] (FLAP's per-channel
    statistics, so that unit scores are standardised exactly as the reference does)."""
    mean, std = stats if stats is not None else (s.mean(), s.std(ddof=1) if s.size > 1 else 0.0)
    return (s - mean) / (std if std > 0 else 1.0)


def per_parameter(power: int):
    """Priority (score / block output_scale)^power / parameters removed."""
    def priority(req: Request, i: int, scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        s = scale[i] if scale is not None and scale[i] > 0 else 1.0
        return ((req.attention[i] / s) ** power / req.costs.unit_cost[i],
                (req.mlp[i] / s) ** power / req.costs.channel_cost[i])
    return priority


def standardised(req: Request, i: int, scale) -> tuple[np.ndarray, np.ndarray]:
    """FLAP's priority: scores standardised per layer and sub-block."""
    stats = req.layers[i].get("standardisation") or {}
    return _standardise(req.attention[i], stats.get("attention")), _standardise(req.mlp[i], stats.get("mlp"))


# name -> priority(request, layer, output_scale or None) -> (unit priorities, channel priorities)
PRIORITIES = {"global": per_parameter(1), "global-energy": per_parameter(2), "global-std": standardised}


def _ranking(req: Request, priority):
    """(priority, cost, layer, is_unit) of every removable unit and channel of the active layers; a layer's
    best channel (and best unit unless attention may go) gets priority inf: it is never removed."""
    costs, scale, columns = req.costs, req.output_scale, []
    for i in np.flatnonzero(req.active):
        pa, pm = (p.copy() for p in priority(req, i, scale))
        if req.min_units and pa.size:
            pa[np.argmax(req.attention[i])] = np.inf
        pm[np.argmax(req.mlp[i])] = np.inf
        for p, c, unit in ((pa, costs.unit_cost[i], True), (pm, costs.channel_cost[i], False)):
            columns.append((p, np.full(p.size, c, dtype=np.int64), np.full(p.size, i, dtype=np.int64),
                            np.full(p.size, unit, dtype=bool)))
    return [np.concatenate(column) for column in zip(*columns)]


def global_counts(req: Request, priority):
    """Kept (units, channels) per layer from one ranking of all units and channels (least important first)."""
    costs, ratio = req.costs, req.ratio
    priorities, cost, layer_of, is_unit = _ranking(req, priority)
    order = np.argsort(priorities)
    removable = int(np.isfinite(priorities).sum())
    reach = np.concatenate([[0], np.cumsum(cost[order][:removable])])
    target = ratio * costs.layer_params.sum()
    if target > reach[-1] + cost.min() / 2:
        raise PlanError(
            f"Global ratio {ratio:g} is impossible: at most {reach[-1] / costs.layer_params.sum():.1%} of the "
            f"attention+MLP parameters can go while every {'layer keeps an attention unit and ' if req.min_units else ''}"
            f"MLP keeps a channel{' (some layers skipped)' if not req.active.all() else ''}. Lower the ratio.")
    gone = order[:int(np.argmin(np.abs(reach - target)))]
    n_layers = len(costs.units)
    removed_units = np.bincount(layer_of[gone][is_unit[gone]], minlength=n_layers)
    removed_channels = np.bincount(layer_of[gone][~is_unit[gone]], minlength=n_layers)
    return costs.units - removed_units, costs.channels - removed_channels


# ----------------------------------------------------------------------------------- manual

def _manual_pairs(layer_ratios, n_layers: int) -> np.ndarray:
    if layer_ratios is None:
        raise PlanError("The manual allocation needs layer_ratios: one (attention_ratio, mlp_ratio) pair per layer.")
    try:
        pairs = np.asarray(layer_ratios, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PlanError(f"layer_ratios must be (attention_ratio, mlp_ratio) pairs, one per layer: {err}") from err
    if pairs.shape != (n_layers, 2):
        raise PlanError(f"The manual allocation needs {n_layers} (attention_ratio, mlp_ratio) pairs, one per layer; "
                        f"got shape {list(pairs.shape)}.")
    if not ((pairs >= 0) & (pairs <= 1)).all():
        raise PlanError("Manual layer ratios must lie in [0, 1] (the fraction of the layer's units or channels removed).")
    return pairs


def manual_counts(req: Request):
    """Kept (units, channels) per layer from the layer's own (attention_ratio, mlp_ratio)."""
    costs = req.costs
    pairs = _manual_pairs(req.layer_ratios, len(costs.units))
    pairs[~req.active] = 0.0
    keep_units = costs.units - nearest(pairs[:, 0] * costs.units)
    keep_channels = costs.channels - nearest(pairs[:, 1] * costs.channels)
    for i in range(len(costs.units)):
        if keep_units[i] < req.min_units:
            raise PlanError(
                f"Layer {i}: attention ratio {pairs[i, 0]:g} removes all {costs.units[i]} attention units. Keep at least "
                f"one, or allow removing whole attention sub-blocks (allow_empty_attention=True).")
        if keep_channels[i] < 1:
            raise PlanError(f"Layer {i}: MLP ratio {pairs[i, 1]:g} removes all {costs.channels[i]} MLP channels; every "
                            f"layer keeps at least one. Lower that layer's MLP ratio.")
    return keep_units, keep_channels


def _ranked(priority):
    def counts(req: Request):
        return global_counts(req, priority)
    counts.__doc__ = f"One global ranking by {priority.__doc__ or priority.__qualname__}"
    return counts


# name -> rule(request) -> (kept units, kept channels) per layer; the order is the app's
ALLOCATORS = {"uniform": uniform_counts, **{name: _ranked(p) for name, p in PRIORITIES.items()},
              "manual": manual_counts}
ALLOCATIONS = tuple(ALLOCATORS)
RATIO_OPTIONAL = ("manual",)  # allocations that take no global ratio


__all__ = ["ALLOCATIONS", "ALLOCATORS", "PRIORITIES", "RATIO_OPTIONAL", "Request", "top", "round_channels",
           "active_layers", "nearest"]

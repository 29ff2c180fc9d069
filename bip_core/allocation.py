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
              score / block scale (when the scores have it) / parameters removed.
  global-energy  one ranking by (score / block scale)^2 / parameters removed. Squared
              block-output changes of units whose directions are uncorrelated add up
              (E||sum_j d_j||^2 ~ sum_j E||d_j||^2), while their norms do not (removing n channels of
              score s changes the block by about sqrt(n) s, not n s). Ranking norms per parameter
              therefore over-charges the many small MLP channels against the few large attention
              units; ranking energies does not.
  global-std  FLAP's ranking: scores standardised per layer and sub-block, (s - mean) / std (with
              the layer's recorded `standardisation` statistics when the scores have them, as FLAP
              scores do), one ranking; units weigh their parameter count when the budget is filled.
  mlp-only    attention is kept whole; every active layer removes the same share of its MLP
              channels (the nearest whole number), so that the global ratio holds.
  paper       each method's own published rule, as its original code runs it (`PAPER_RULES`):
              Wanda-sp removes int(r * units) attention units and int(r * channels) channels in
              every layer (FLAP's `prune_wanda_sp`); LLM-Pruner (taylor, and its magnitude and
              random baselines) the same counts in its layer range only, layers 4 to 29 of 32 (its
              scripts' `--block_*_layer_start 4 --block_*_layer_end 30`, scaled to the model's
              depth); FLAP its standardised global ranking (global-std); LLM-BIP its global-energy
              ranking. The per-layer rules remove less than r overall: the plan's summary says how
              much (`removed_attention_mlp`).
  paper-scaled  the same per-layer rule with the per-layer ratio raised until the plan removes r
              overall (nearest reachable), so that it can be compared at an equal budget.
  manual      per-layer (attention_ratio, mlp_ratio) pairs, e.g. `plan.meta["layer_ratios"]` of
              another plan edited with sliders.

The global rankings differ only in their priority function (`PRIORITIES`: lower goes first); a new
ranking is one entry there, any other rule one entry in `ALLOCATORS`.

The block scale that global and global-energy divide by (`BLOCK_SCALES`, a plan's `block_scale`; "auto",
the default, takes mean-median where the scores record the median, else mean):

  mean         mean_t ||y_t|| of the block's outputs (the scores' output_scale)
  mean-median  sqrt(mean x median) of ||y_t|| (output_scale, output_median): less swayed by the few
              massive-activation tokens that multiply a block's mean norm (the default model's layer 11:
              2.3x), which make the later blocks' relative changes look small. LLM-BIP under global-energy,
              default model, wiki-bb valid, seeds 0-2: 108.5 against 122.8 at 0.5, 39.7 against 40.0 at 0.2
              (refit + sequential; README "The block scale of the global ranking").
"""
from __future__ import annotations

import math
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
    method: str | None = None     # the scoring method (the `paper` rules depend on it)
    block_scale: str = "mean"     # BLOCK_SCALES: what the global rankings divide a block's scores by

    @property
    def block_scales(self) -> np.ndarray | None:
        """Per-layer block scale (BLOCK_SCALES[block_scale]) when every layer records what it needs; None when
        the scores record no output scale at all (weight-only methods)."""
        if any(layer.get("output_scale") is None for layer in self.layers):
            return None
        scale = [BLOCK_SCALES[self.block_scale](layer) for layer in self.layers]
        if any(s is None for s in scale):
            raise PlanError(f"Block scale '{self.block_scale}' needs every layer's output_median, which these scores "
                            "do not record (scored before it was recorded). Score again, or use block scale 'mean'.")
        return np.asarray(scale, dtype=np.float64)


def mean_median(layer: dict) -> float | None:
    """sqrt(mean x median) of the block's output norms, or None without a recorded median."""
    median = layer.get("output_median")
    return None if median is None else math.sqrt(layer["output_scale"] * median)


# name -> a block's scale from its scores entry (the module docstring); None where the entry lacks what it needs
BLOCK_SCALES = {"mean": lambda layer: layer["output_scale"], "mean-median": mean_median}


def resolve_block_scale(block_scale: str, layers: list[dict]) -> str:
    """A BLOCK_SCALES name; "auto": mean-median where every layer records its output median (scores made since
    2026-12-03), else mean (older scores plan as they did)."""
    if block_scale == "auto":
        return "mean-median" if all("output_median" in layer for layer in layers) else "mean"
    if block_scale not in BLOCK_SCALES:
        raise PlanError(f"Unknown block scale '{block_scale}'; choose one of auto, {', '.join(BLOCK_SCALES)}.")
    return block_scale


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
    """Priority (score / block scale)^power / parameters removed."""
    def priority(req: Request, i: int, scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        s = scale[i] if scale is not None and scale[i] > 0 else 1.0
        return ((req.attention[i] / s) ** power / req.costs.unit_cost[i],
                (req.mlp[i] / s) ** power / req.costs.channel_cost[i])
    return priority


def standardised(req: Request, i: int, scale) -> tuple[np.ndarray, np.ndarray]:
    """FLAP's priority: scores standardised per layer and sub-block."""
    stats = req.layers[i].get("standardisation") or {}
    return _standardise(req.attention[i], stats.get("attention")), _standardise(req.mlp[i], stats.get("mlp"))


# name -> priority(request, layer, block_scales or None) -> (unit priorities, channel priorities)
PRIORITIES = {"global": per_parameter(1), "global-energy": per_parameter(2), "global-std": standardised}


def _ranking(req: Request, priority):
    """(priority, cost, layer, is_unit) of every removable unit and channel of the active layers; a layer's
    best channel (and best unit unless attention may go) gets priority inf: it is never removed."""
    costs, scale, columns = req.costs, req.block_scales, []
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


# ----------------------------------------------------------------------------------- mlp-only

def mlp_only_counts(req: Request):
    """Kept (units, channels): all units, and the same share of every active layer's channels."""
    costs = req.costs
    share = req.ratio * costs.layer_params.sum() / (costs.channels * costs.channel_cost)[req.active].sum()
    if (share * costs.channels[req.active] > costs.channels[req.active] - 0.5).any():
        raise PlanError(f"MLP-only ratio {req.ratio:g} is impossible: it would empty the MLPs, which hold too few of "
                        "the attention+MLP parameters. Lower the ratio, or use an allocation that prunes attention too.")
    removed = np.where(req.active, np.minimum(nearest(share * costs.channels), costs.channels - 1), 0)
    return costs.units.copy(), costs.channels - removed


# ----------------------------------------------------------------------------------- the methods' own rules

LLM_PRUNER_RANGE = (4, 30, 32)  # its scripts prune layers [4, 30) of LLaMA-7B's 32


def llm_pruner_layers(n_layers: int) -> np.ndarray:
    """Layers LLM-Pruner prunes, its [4, 30) of 32 scaled to `n_layers`."""
    start, end, depth = LLM_PRUNER_RANGE
    active = np.zeros(n_layers, dtype=bool)
    active[int(round(start * n_layers / depth)):int(round(end * n_layers / depth))] = True
    return active


def per_layer_floor(req: Request, ratio: float, layers: np.ndarray | None = None):
    """Kept (units, channels) when each pruned layer removes int(ratio * units) units and
    int(ratio * channels) channels (Wanda-sp's and LLM-Pruner's counts)."""
    costs = req.costs
    active = req.active & (np.ones(len(costs.units), dtype=bool) if layers is None else layers)
    removed_units = np.minimum(np.floor(ratio * costs.units).astype(np.int64), costs.units - req.min_units)
    removed_channels = np.minimum(np.floor(ratio * costs.channels).astype(np.int64), costs.channels - 1)
    return (np.where(active, costs.units - removed_units, costs.units),
            np.where(active, costs.channels - removed_channels, costs.channels))


def _wanda_sp(req: Request, ratio: float):
    return per_layer_floor(req, ratio)


def _llm_pruner(req: Request, ratio: float):
    return per_layer_floor(req, ratio, llm_pruner_layers(len(req.costs.units)))


# method -> its own per-layer rule(request, per-layer ratio); methods absent here rank globally
PER_LAYER_RULES = {"wanda-sp": _wanda_sp, "taylor": _llm_pruner, "magnitude": _llm_pruner, "random": _llm_pruner}
GLOBAL_RULES = {"flap": "global-std", "bip": "global-energy"}


def _rule(req: Request):
    if req.method in PER_LAYER_RULES:
        return PER_LAYER_RULES[req.method]
    if req.method in GLOBAL_RULES:
        return None
    raise PlanError(f"The 'paper' allocation needs to know the scoring method; these scores say "
                    f"'{req.method}'. Use another allocation (uniform, global-energy, ...).")


def paper_counts(req: Request):
    """Kept (units, channels) by the method's own published rule at per-layer ratio `ratio`."""
    rule = _rule(req)
    if rule is None:
        return global_counts(req, PRIORITIES[GLOBAL_RULES[req.method]])
    return rule(req, req.ratio)


def _removed_fraction(req: Request, counts) -> float:
    removed, _ = req.costs.removed(*counts)
    return float(removed.sum() / req.costs.layer_params.sum())


def paper_scaled_counts(req: Request):
    """The method's own rule with its per-layer ratio raised until the plan removes `ratio` overall."""
    rule = _rule(req)
    if rule is None:
        return paper_counts(req)
    low, high = req.ratio, 1.0  # removal grows with the per-layer ratio; its rule never removes more than asked
    for _ in range(40):
        mid = (low + high) / 2
        if _removed_fraction(req, rule(req, mid)) < req.ratio:
            low = mid
        else:
            high = mid
    best = min((rule(req, r) for r in (low, high)), key=lambda c: abs(_removed_fraction(req, c) - req.ratio))
    if _removed_fraction(req, best) < req.ratio * 0.9:
        raise PlanError(f"{req.method}'s own rule cannot remove {req.ratio:.0%} of this model's attention+MLP "
                        f"parameters (at most {_removed_fraction(req, best):.1%}). Lower the ratio.")
    return best


def _ranked(priority):
    def counts(req: Request):
        return global_counts(req, priority)
    counts.__doc__ = f"One global ranking by {priority.__doc__ or priority.__qualname__}"
    return counts


# name -> rule(request) -> (kept units, kept channels) per layer; the order is the app's
ALLOCATORS = {"uniform": uniform_counts, **{name: _ranked(p) for name, p in PRIORITIES.items()},
              "mlp-only": mlp_only_counts, "paper": paper_counts, "paper-scaled": paper_scaled_counts,
              "manual": manual_counts}
ALLOCATIONS = tuple(ALLOCATORS)
RATIO_OPTIONAL = ("manual",)  # allocations that take no global ratio


__all__ = ["ALLOCATIONS", "ALLOCATORS", "BLOCK_SCALES", "PRIORITIES", "RATIO_OPTIONAL", "Request", "top",
           "round_channels", "active_layers", "nearest", "resolve_block_scale"]

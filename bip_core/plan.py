"""From scores to a pruning plan: the attention units and MLP channels every layer keeps.

METHOD.md section 3. A plan is bookkeeping only (kept indices + provenance); `bip_core.surgery`
applies it to a model.

**Ratio** is the fraction of attention+MLP parameters removed: the weights and biases of
q/k/v/o_proj and gate/up/down_proj, as `architecture.count_params` counts them. One attention unit
costs its q rows, k/v rows (KV groups and MHA heads only) and o_proj columns; one MLP channel costs
a row of gate_proj and up_proj and a column of down_proj.

**Allocations**

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

**Constraints**: every layer keeps at least one attention unit unless `allow_empty_attention`, and
always at least one MLP channel; kept channels are rounded to a multiple of `round_to`; units are
whole KV groups, whole query slots (the same slot of every group) or MHA heads, so any plan gives a
valid GQA layout. The most important unit/channel of a layer is the one protected.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .architecture import UNIT_KINDS, LayerGeometry, block_parts, count_params, default_unit, model_geometry
from .errors import PlanError

ALLOCATIONS = ("uniform", "global", "global-energy", "global-std", "manual")
PLAN_VERSION = 1
CALIBRATION_KEYS = ("model", "source", "samples", "seq_len", "seed")


# ----------------------------------------------------------------------------------- scores input

def scores_parts(scores) -> tuple[list, dict]:
    """(layers, meta) of a `Scores` object or of its JSON dict."""
    if isinstance(scores, dict):
        layers, meta = scores.get("layers"), scores.get("meta", {})
    else:
        layers, meta = getattr(scores, "layers", None), getattr(scores, "meta", {})
    if not isinstance(layers, (list, tuple)) or not layers:
        raise PlanError("The scores have no per-layer entries ('layers'); score the model first.")
    return list(layers), dict(meta or {})


def _score_arrays(layers, geometry: list[LayerGeometry], unit: str, model_name) -> tuple[list, list]:
    """Per-layer float64 arrays of attention-unit and channel scores, checked against the model."""
    if len(layers) != len(geometry):
        raise PlanError(
            f"The scores have {len(layers)} layers but the model has {len(geometry)}: they are from another "
            f"model (scored: {model_name}). Score this model, or load the model the scores came from.")
    attention, mlp = [], []
    for i, (entry, geom) in enumerate(zip(layers, geometry)):
        a = np.asarray(entry["attention"], dtype=np.float64)
        m = np.asarray(entry["mlp"], dtype=np.float64)
        units = geom.num_units(unit)
        if a.shape != (units,) or m.shape != (geom.intermediate,):
            raise PlanError(
                f"Layer {i}: the scores have {a.size} attention units and {m.size} MLP channels, the model has "
                f"{units} {unit} units and {geom.intermediate} channels: the scores are from another model "
                f"(scored: {model_name}). Score this model.")
        if not (np.isfinite(a).all() and np.isfinite(m).all()):
            raise PlanError(f"Layer {i}: the scores contain NaN or infinite values; rescore the model.")
        attention.append(a)
        mlp.append(m)
    return attention, mlp


# ----------------------------------------------------------------------------------- costs

@dataclass(frozen=True)
class Costs:
    """Parameter bookkeeping of a model for one unit kind (per-layer numpy arrays, length L)."""

    units: np.ndarray         # attention units per layer
    channels: np.ndarray      # MLP channels per layer
    unit_cost: np.ndarray     # parameters removed with one attention unit
    channel_cost: np.ndarray  # parameters removed with one MLP channel
    layer_params: np.ndarray  # attention+MLP parameters of the layer
    total: int                # all parameters of the model, tied embeddings once
    # freed only when a layer's attention goes entirely: q/k/v/o parameters beyond its units (the
    # k/v heads under query slots; o_proj's bias stays) and other parameters (Qwen3 q_norm/k_norm)
    attention_rest: np.ndarray | None = None
    attention_norms: np.ndarray | None = None

    @classmethod
    def of_model(cls, model, unit: str, geometry: list[LayerGeometry]) -> "Costs":
        units, channels, unit_cost, channel_cost, layer_params = [], [], [], [], []
        rest, norms = [], []
        for i, geom in enumerate(geometry):
            p = block_parts(model, i)
            has_bias = {name: int(getattr(p, name).bias is not None) for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")}
            q_heads, kv_heads = geom.unit_heads(unit, 0)
            hd, hidden = geom.head_dim, geom.hidden
            units.append(geom.num_units(unit))
            channels.append(geom.intermediate)
            unit_cost.append(len(q_heads) * hd * (2 * hidden + has_bias["q_proj"])
                             + len(kv_heads) * hd * (2 * hidden + has_bias["k_proj"] + has_bias["v_proj"]))
            channel_cost.append(3 * hidden + has_bias["gate_proj"] + has_bias["up_proj"])
            size = {name: lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
                    for name, lin in ((n, getattr(p, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"))}
            layer_params.append(sum(size.values()))
            o_bias = p.o_proj.bias.numel() if p.o_proj.bias is not None else 0
            rest.append(sum(size[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj")) - o_bias
                        - units[-1] * unit_cost[-1])
            norms.append(sum(x.numel() for norm in (p.q_norm, p.k_norm) if norm is not None for x in norm.parameters()))
        arrays = (units, channels, unit_cost, channel_cost, layer_params)
        return cls(*(np.asarray(x, dtype=np.int64) for x in arrays), total=count_params(model)["total"],
                   attention_rest=np.asarray(rest, dtype=np.int64), attention_norms=np.asarray(norms, dtype=np.int64))

    def to_dict(self) -> dict:
        return {"unit": self.unit_cost.tolist(), "channel": self.channel_cost.tolist(),
                "layer_params": self.layer_params.tolist(), "total": int(self.total),
                "attention_rest": self.attention_rest.tolist(), "attention_norms": self.attention_norms.tolist()}

    @classmethod
    def from_dict(cls, d: dict, geometry: list[dict], unit: str) -> "Costs":
        geoms = [LayerGeometry(**g) for g in geometry]

        def ints(key):
            return np.asarray(d.get(key, [0] * len(geoms)), dtype=np.int64)

        return cls(units=np.asarray([g.num_units(unit) for g in geoms], dtype=np.int64),
                   channels=np.asarray([g.intermediate for g in geoms], dtype=np.int64),
                   unit_cost=ints("unit"), channel_cost=ints("channel"), layer_params=ints("layer_params"),
                   total=int(d["total"]), attention_rest=ints("attention_rest"), attention_norms=ints("attention_norms"))

    def removed(self, kept_units: np.ndarray, kept_channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per layer (attention+MLP parameters removed, other parameters removed) for these kept counts."""
        empty = kept_units == 0
        linear = ((self.units - kept_units) * self.unit_cost + (self.channels - kept_channels) * self.channel_cost
                  + np.where(empty, self.attention_rest, 0))
        return linear, np.where(empty, self.attention_norms, 0)


# ----------------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    """Kept attention units and MLP channels per layer (sorted indices), and where they came from."""

    unit: str
    layers: list[dict]
    meta: dict = field(default_factory=dict)

    # -- geometry of the base model and of the pruned layers
    def geometry(self) -> list[LayerGeometry]:
        return [LayerGeometry(**g) for g in self.meta["geometry"]]

    def costs(self) -> Costs:
        return Costs.from_dict(self.meta["costs"], self.meta["geometry"], self.unit)

    def kept_heads(self, i: int, geom: LayerGeometry | None = None) -> tuple[list[int], list[int]]:
        """(query heads, kv heads) of the base layer that layer i keeps, in their original order."""
        geom = geom or self.geometry()[i]
        kept = self.layers[i]["attention"]
        if self.unit == "query_slot":  # the same slots of every group: the groups stay, each smaller
            q_heads = [g * geom.n_rep + s for g in range(geom.num_kv_heads) for s in kept]
            return q_heads, (list(range(geom.num_kv_heads)) if kept else [])
        q_heads, kv_heads = [], []
        for idx in kept:
            q, kv = geom.unit_heads(self.unit, idx)
            q_heads += q
            kv_heads += kv
        return q_heads, kv_heads

    def layer_shapes(self) -> list[dict]:
        """Per-layer shapes of the pruned model: num_heads, num_kv_heads, head_dim, intermediate."""
        shapes = []
        for i, geom in enumerate(self.geometry()):
            q_heads, kv_heads = self.kept_heads(i, geom)
            shapes.append({"num_heads": len(q_heads), "num_kv_heads": len(kv_heads), "head_dim": geom.head_dim,
                           "intermediate": len(self.layers[i]["mlp"])})
        return shapes

    def removed(self, i: int) -> dict:
        """Removed attention units and MLP channels of layer i (for overlays and masks)."""
        geom = self.geometry()[i]
        keep_a, keep_m = set(self.layers[i]["attention"]), set(self.layers[i]["mlp"])
        return {"attention": [u for u in range(geom.num_units(self.unit)) if u not in keep_a],
                "mlp": [c for c in range(geom.intermediate) if c not in keep_m]}

    def kept_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray([len(layer["attention"]) for layer in self.layers], dtype=np.int64),
                np.asarray([len(layer["mlp"]) for layer in self.layers], dtype=np.int64))

    # -- reporting
    def summary(self, model=None) -> dict:
        """Removed fraction of attention+MLP params and of all params, params remaining, per-layer counts."""
        if model is not None:
            self.check_matches(model)
        costs = self.costs()
        kept_units, kept_channels = self.kept_counts()
        removed_layer, removed_other = costs.removed(kept_units, kept_channels)
        removed = int(removed_layer.sum())
        removed_all = removed + int(removed_other.sum())
        attn_mlp = int(costs.layer_params.sum())
        shapes = self.layer_shapes()
        return {
            "method": self.meta.get("method"),
            "unit": self.unit,
            "allocation": self.meta.get("allocation"),
            "ratio_requested": self.meta.get("ratio"),
            "removed_attention_mlp": removed / attn_mlp if attn_mlp else 0.0,
            "removed_total": removed_all / costs.total if costs.total else 0.0,
            "params_before": costs.total,
            "params_after": costs.total - removed_all,
            "attention_mlp_before": attn_mlp,
            "attention_mlp_after": attn_mlp - removed,
            "layers": [{"layer": i, "attention_kept": int(kept_units[i]), "attention_total": int(costs.units[i]),
                        "heads": shapes[i]["num_heads"], "kv_heads": shapes[i]["num_kv_heads"],
                        "mlp_kept": int(kept_channels[i]), "mlp_total": int(costs.channels[i]),
                        "removed": float(removed_layer[i] / costs.layer_params[i]) if costs.layer_params[i] else 0.0}
                       for i in range(len(self.layers))],
        }

    def check_matches(self, model) -> None:
        """Raise PlanError unless `model` has the geometry this plan was made for."""
        mine = self.meta["geometry"]
        theirs = [asdict(g) for g in model_geometry(model)]
        if mine != theirs:
            where = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            raise PlanError(
                f"This plan was made for another model geometry ({len(mine)} layers; layer {where}: "
                f"{mine[where] if where < len(mine) else 'absent'}) than this model ({len(theirs)} layers; layer "
                f"{where}: {theirs[where] if where < len(theirs) else 'absent'}). Make a plan from scores of this model.")

    # -- persistence
    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "unit": self.unit, "layers": self.layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        try:
            plan = cls(unit=d["unit"], layers=[{"attention": [int(u) for u in layer["attention"]],
                                                "mlp": [int(c) for c in layer["mlp"]]} for layer in d["layers"]],
                       meta=dict(d["meta"]))
            geometry = plan.geometry()
            plan.costs()
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"Not a BIP Studio plan ({type(err).__name__}: {err}); make one with `python -m bip_core plan`.") from err
        if plan.unit not in UNIT_KINDS:
            raise PlanError(f"Plan unit '{plan.unit}' is not one of {UNIT_KINDS}.")
        if len(geometry) != len(plan.layers):
            raise PlanError(f"The plan lists {len(plan.layers)} layers but its geometry has {len(geometry)}.")
        for i, (layer, geom) in enumerate(zip(plan.layers, geometry)):
            for key, n in (("attention", geom.num_units(plan.unit)), ("mlp", geom.intermediate)):
                idx = layer[key]
                if idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= n)):
                    raise PlanError(f"Plan layer {i}: '{key}' must be sorted distinct indices in [0, {n}).")
            if not layer["mlp"]:
                raise PlanError(f"Plan layer {i} keeps no MLP channel; every layer must keep at least one.")
        return plan

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PlanError(f"Cannot read the plan {path}: {err}") from err
        return cls.from_dict(d)


# ----------------------------------------------------------------------------------- allocation

def _nearest(x) -> np.ndarray:
    """Round half up (so 1.5 units -> 2), as integers."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _round_channels(keep: np.ndarray, channels: np.ndarray, round_to: int) -> np.ndarray:
    """Kept channel counts rounded to a multiple of round_to (a layer left whole stays whole)."""
    if round_to <= 1:
        return keep
    top = (channels // round_to) * round_to
    rounded = np.clip(_nearest(keep / round_to) * round_to, round_to, np.maximum(top, round_to))
    return np.where(keep >= channels, channels, np.minimum(rounded, channels))


def _active(n_layers: int, skip_first: int, skip_last: int) -> np.ndarray:
    active = np.ones(n_layers, dtype=bool)
    active[:skip_first] = False
    active[n_layers - skip_last:] = False
    return active


def _uniform_counts(costs: Costs, ratio: float, active: np.ndarray, min_units: int):
    """Kept (units, channels) per layer: every active layer removes the same share of its params."""
    share = ratio * costs.layer_params.sum() / costs.layer_params[active].sum()
    max_removable = (costs.units - min_units) * costs.unit_cost + (costs.channels - 1) * costs.channel_cost
    short = active & (share * costs.layer_params > max_removable + costs.channel_cost / 2)
    if short.any():
        skipped = int((~active).sum())
        raise PlanError(
            f"Uniform ratio {ratio:g} is impossible{f' with {skipped} layers skipped' if skipped else ''}: layer "
            f"{int(np.flatnonzero(short)[0])} would have to remove {share:.1%} of its attention+MLP parameters while "
            f"keeping {'an attention unit and ' if min_units else ''}an MLP channel. Lower the ratio or skip fewer layers.")
    removed_units = np.minimum(_nearest(share * costs.units), costs.units - min_units)
    budget = share * costs.layer_params - removed_units * costs.unit_cost
    removed_channels = np.clip(_nearest(budget / costs.channel_cost), 0, costs.channels - 1)
    keep_units = np.where(active, costs.units - removed_units, costs.units)
    keep_channels = np.where(active, costs.channels - removed_channels, costs.channels)
    return keep_units, keep_channels


def _standardise(s: np.ndarray, stats=None) -> np.ndarray:
    """(s - mean) / std over the layer's scores, or with the scores' recorded [mean, std] (FLAP's per-channel
    statistics, so that unit scores are standardised exactly as the reference does)."""
    mean, std = stats if stats is not None else (s.mean(), s.std(ddof=1) if s.size > 1 else 0.0)
    return (s - mean) / (std if std > 0 else 1.0)


def _global_counts(attention, mlp, costs: Costs, ratio: float, active: np.ndarray, min_units: int,
                   standardise: bool, output_scale, stats, power: int = 1):
    """Kept (units, channels) per layer from one ranking of all units and channels (least important first)."""
    priority, cost, layer_of, is_unit = [], [], [], []
    for i in np.flatnonzero(active):
        a, m = attention[i], mlp[i]
        if standardise:
            pa, pm = _standardise(a, (stats[i] or {}).get("attention")), _standardise(m, (stats[i] or {}).get("mlp"))
        else:
            scale = output_scale[i] if output_scale is not None and output_scale[i] > 0 else 1.0
            pa, pm = (a / scale) ** power / costs.unit_cost[i], (m / scale) ** power / costs.channel_cost[i]
        if min_units and pa.size:
            pa = pa.copy()
            pa[np.argmax(a)] = np.inf  # the layer's best unit is never removed
        pm = pm.copy()
        pm[np.argmax(m)] = np.inf
        for p, c, unit in ((pa, costs.unit_cost[i], True), (pm, costs.channel_cost[i], False)):
            priority.append(p)
            cost.append(np.full(p.size, c, dtype=np.int64))
            layer_of.append(np.full(p.size, i, dtype=np.int64))
            is_unit.append(np.full(p.size, unit, dtype=bool))
    priority, cost = np.concatenate(priority), np.concatenate(cost)
    layer_of, is_unit = np.concatenate(layer_of), np.concatenate(is_unit)
    order = np.argsort(priority)
    removable = int(np.isfinite(priority).sum())
    reach = np.concatenate([[0], np.cumsum(cost[order][:removable])])
    target = ratio * costs.layer_params.sum()
    if target > reach[-1] + cost.min() / 2:
        raise PlanError(
            f"Global ratio {ratio:g} is impossible: at most {reach[-1] / costs.layer_params.sum():.1%} of the "
            f"attention+MLP parameters can go while every {'layer keeps an attention unit and ' if min_units else ''}"
            f"MLP keeps a channel{' (some layers skipped)' if not active.all() else ''}. Lower the ratio.")
    n_removed = int(np.argmin(np.abs(reach - target)))
    gone = order[:n_removed]
    n_layers = len(costs.units)
    removed_units = np.bincount(layer_of[gone][is_unit[gone]], minlength=n_layers)
    removed_channels = np.bincount(layer_of[gone][~is_unit[gone]], minlength=n_layers)
    return costs.units - removed_units, costs.channels - removed_channels


def _manual_counts(costs: Costs, layer_ratios, active: np.ndarray, min_units: int):
    n_layers = len(costs.units)
    try:
        pairs = np.asarray(layer_ratios, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PlanError(f"layer_ratios must be (attention_ratio, mlp_ratio) pairs, one per layer: {err}") from err
    if pairs.shape != (n_layers, 2):
        raise PlanError(f"The manual allocation needs {n_layers} (attention_ratio, mlp_ratio) pairs, one per layer; "
                        f"got shape {list(pairs.shape)}.")
    if not ((pairs >= 0) & (pairs <= 1)).all():
        raise PlanError("Manual layer ratios must lie in [0, 1] (the fraction of the layer's units or channels removed).")
    pairs[~active] = 0.0
    keep_units = costs.units - _nearest(pairs[:, 0] * costs.units)
    keep_channels = costs.channels - _nearest(pairs[:, 1] * costs.channels)
    for i in range(n_layers):
        if keep_units[i] < min_units:
            raise PlanError(
                f"Layer {i}: attention ratio {pairs[i, 0]:g} removes all {costs.units[i]} attention units. Keep at least "
                f"one, or allow removing whole attention sub-blocks (allow_empty_attention=True).")
        if keep_channels[i] < 1:
            raise PlanError(f"Layer {i}: MLP ratio {pairs[i, 1]:g} removes all {costs.channels[i]} MLP channels; every "
                            f"layer keeps at least one. Lower that layer's MLP ratio.")
    return keep_units, keep_channels


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Sorted indices of the k highest scores."""
    if k >= scores.size:
        return list(range(scores.size))
    if k <= 0:
        return []
    return np.sort(np.argpartition(-scores, k - 1)[:k]).tolist()


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(ratio)) or not 0 <= float(ratio) < 1:
        raise PlanError(f"Ratio must be a number in [0, 1): the fraction of attention+MLP parameters to remove "
                        f"(0.2 removes 20%). Got {ratio!r}.")
    return float(ratio)


def make_plan(scores, model, ratio, allocation: str = "uniform", skip_first: int = 0, skip_last: int = 0,
              layer_ratios=None, allow_empty_attention: bool = False, round_to: int = 1) -> Plan:
    """Kept units and channels per layer that remove `ratio` of the attention+MLP parameters.

    scores: a `Scores` or its JSON dict; model: the model the scores are from (only its geometry and
    parameter counts are read). `ratio` may be None for the manual allocation.
    """
    if allocation not in ALLOCATIONS:
        raise PlanError(f"Unknown allocation '{allocation}'; choose one of {', '.join(ALLOCATIONS)}.")
    ratio = None if (ratio is None and allocation == "manual") else _check_ratio(ratio)
    layers, scores_meta = scores_parts(scores)
    geometry = model_geometry(model)
    unit = scores_meta.get("unit") or default_unit(geometry[0])
    if unit not in UNIT_KINDS or (unit == "head" and any(g.n_rep != 1 for g in geometry)):
        raise PlanError(f"Scores unit '{unit}' does not fit this model (unit kinds: {UNIT_KINDS}; 'head' is for MHA).")
    attention, mlp = _score_arrays(layers, geometry, unit, scores_meta.get("model"))
    if callable(getattr(scores, "check_matches", None)) and scores_meta.get("geometry") is not None:
        scores.check_matches(model)  # the Scores object's own, finer check (widths, hidden size)
    n_layers = len(geometry)
    for name, value in (("skip_first", skip_first), ("skip_last", skip_last), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if name == "round_to" else 0):
            raise PlanError(f"{name} must be a whole number >= {1 if name == 'round_to' else 0}; got {value!r}.")
    if skip_first + skip_last >= n_layers:
        raise PlanError(f"Skipping {skip_first} first and {skip_last} last layers leaves none of the {n_layers} to prune.")

    costs = Costs.of_model(model, unit, geometry)
    active = _active(n_layers, skip_first, skip_last)
    min_units = 0 if allow_empty_attention else 1
    if allocation == "uniform":
        keep_units, keep_channels = _uniform_counts(costs, ratio, active, min_units)
    elif allocation in ("global", "global-energy", "global-std"):
        scale = [layer.get("output_scale") for layer in layers]
        scale = np.asarray(scale, dtype=np.float64) if all(s is not None for s in scale) else None
        keep_units, keep_channels = _global_counts(attention, mlp, costs, ratio, active, min_units,
                                                   allocation == "global-std", scale,
                                                   [layer.get("standardisation") for layer in layers],
                                                   power=2 if allocation == "global-energy" else 1)
    else:
        if layer_ratios is None:
            raise PlanError("The manual allocation needs layer_ratios: one (attention_ratio, mlp_ratio) pair per layer.")
        keep_units, keep_channels = _manual_counts(costs, layer_ratios, active, min_units)
    keep_channels = _round_channels(keep_channels, costs.channels, round_to)

    kept = [{"attention": _top(attention[i], int(keep_units[i])), "mlp": _top(mlp[i], int(keep_channels[i]))}
            for i in range(n_layers)]
    attn_removed = (costs.units - keep_units) / np.maximum(costs.units, 1)
    mlp_removed = (costs.channels - keep_channels) / costs.channels
    meta = {
        "method": scores_meta.get("method"),
        "ratio": ratio,
        "allocation": allocation,
        "skip_first": int(skip_first),
        "skip_last": int(skip_last),
        "round_to": int(round_to),
        "allow_empty_attention": bool(allow_empty_attention),
        "layer_ratios": [[float(a), float(m)] for a, m in zip(attn_removed, mlp_removed)],
        "calibration": {k: scores_meta.get(k) for k in CALIBRATION_KEYS},
        "scores_options": scores_meta.get("options"),
        "geometry": [asdict(g) for g in geometry],
        "costs": costs.to_dict(),
    }
    plan = Plan(unit=unit, layers=kept, meta=meta)
    meta["removed_attention_mlp"] = plan.summary()["removed_attention_mlp"]
    return plan


__all__ = ["ALLOCATIONS", "Plan", "make_plan", "scores_parts"]

"""From scores to a pruning plan: the attention units and MLP channels every layer keeps.

METHOD.md section 3. A plan is bookkeeping only (kept indices + provenance); `bip_core.surgery`
applies it to a model. `make_plan` checks the scores against the model, asks an allocation rule
(`bip_core.allocation`) how many units and channels each layer keeps, and keeps the top-scored ones.

**Ratio** is the fraction of attention+MLP parameters removed, with the parameter costs of
`bip_core.costs.Costs`.

**Constraints**: every layer keeps at least one attention unit unless `allow_empty_attention`, and
always at least one MLP channel; kept channels are rounded to a multiple of `round_to`; units are
whole KV groups, whole query slots (the same slot of every group) or MHA heads, so any plan gives a
valid GQA layout. The most important unit/channel of a layer is the one protected.

Plan files: version 2 records `meta["geometry"]` with `LayerGeometry.to_record()` (the HF config's
names); version 1 files (num_heads / num_kv_heads / intermediate / hidden) still load.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .allocation import (ALLOCATIONS, ALLOCATORS, BLOCK_SCALES, RATIO_OPTIONAL, Request, active_layers,
                         resolve_block_scale, round_channels, top)
from .architecture import (UNIT_KINDS, LayerGeometry, check_geometry, default_unit, geometry_from_record,
                           geometry_record, model_geometry)
from .atomic import write_text_atomic
from .costs import Costs
from .errors import PlanError

PLAN_VERSION = 2
READABLE_VERSIONS = (1, 2)
CALIBRATION_KEYS = ("model", "source", "samples", "seq_len", "seed")


@dataclass
class Plan:
    """Kept attention units and MLP channels per layer (sorted indices), and where they came from."""

    unit: str
    layers: list[dict]
    meta: dict = field(default_factory=dict)

    # -- geometry of the base model and of the pruned layers
    def geometry(self) -> list[LayerGeometry]:
        return geometry_from_record(self.meta["geometry"])

    def costs(self) -> Costs:
        return Costs.from_dict(self.meta["costs"], self.geometry(), self.unit)

    def kept_heads(self, i: int, geom: LayerGeometry | None = None) -> tuple[list[int], list[int]]:
        """(query heads, kv heads) of the base layer that layer i keeps, in their original order."""
        geom = geom or self.geometry()[i]
        kept = self.layers[i]["attention"]
        if self.unit == "query_slot":  # the same slots of every group: the groups stay, each smaller
            q_heads = [g * geom.n_rep + s for g in range(geom.num_key_value_heads) for s in kept]
            return q_heads, (list(range(geom.num_key_value_heads)) if kept else [])
        q_heads, kv_heads = [], []
        for idx in kept:
            q, kv = geom.unit_heads(self.unit, idx)
            q_heads += q
            kv_heads += kv
        return q_heads, kv_heads

    def pruned_shapes(self) -> list[dict]:
        """Per-layer shapes of the pruned model, as the export's `bip_layer_shapes` lists them:
        num_heads, num_kv_heads, head_dim, intermediate (`export.layer_shapes(model)` reads a model's)."""
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
                "mlp": [c for c in range(geom.intermediate_size) if c not in keep_m]}

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
        shapes = self.pruned_shapes()
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
        check_geometry(self.geometry(), model, PlanError, "This plan was", "Make a plan from scores of this model.")

    # -- persistence
    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "unit": self.unit, "layers": self.layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """A plan from its dict (version 1 or 2), checked; the geometry record is upgraded to version 2."""
        if isinstance(d, dict) and d.get("version", 1) not in READABLE_VERSIONS:
            raise PlanError(f"Plan version {d.get('version')} is not supported (this version reads "
                            f"{', '.join(map(str, READABLE_VERSIONS))}); make the plan again with `python -m bip_core plan`.")
        try:
            plan = cls(unit=d["unit"], layers=[{"attention": [int(u) for u in layer["attention"]],
                                                "mlp": [int(c) for c in layer["mlp"]]} for layer in d["layers"]],
                       meta=dict(d["meta"]))
            geometry = plan.geometry()
            plan.meta["geometry"] = geometry_record(geometry)
            plan.costs()
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"Not a BIP Studio plan ({type(err).__name__}: {err}); make one with `python -m bip_core plan`.") from err
        plan._check_layers(geometry)
        return plan

    def _check_layers(self, geometry: list[LayerGeometry]) -> None:
        if self.unit not in UNIT_KINDS:
            raise PlanError(f"Plan unit '{self.unit}' is not one of {UNIT_KINDS}.")
        if len(geometry) != len(self.layers):
            raise PlanError(f"The plan lists {len(self.layers)} layers but its geometry has {len(geometry)}.")
        for i, (layer, geom) in enumerate(zip(self.layers, geometry)):
            for key, n in (("attention", geom.num_units(self.unit)), ("mlp", geom.intermediate_size)):
                idx = layer[key]
                if idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= n)):
                    raise PlanError(f"Plan layer {i}: '{key}' must be sorted distinct indices in [0, {n}).")
            if not layer["mlp"]:
                raise PlanError(f"Plan layer {i} keeps no MLP channel; every layer must keep at least one.")

    def save(self, path) -> Path:
        """Write the plan's JSON atomically: on any error the old file stays and no temporary file is left."""
        try:
            text = json.dumps(self.to_dict())
        except (TypeError, ValueError) as err:
            raise PlanError(f"This plan cannot be written as JSON ({err}); its meta must hold only JSON values "
                            "(numbers, strings, lists, dicts).") from err
        return write_text_atomic(path, text)

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PlanError(f"Cannot read the plan {path}: {err}") from err
        return cls.from_dict(d)


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
        if a.shape != (units,) or m.shape != (geom.intermediate_size,):
            raise PlanError(
                f"Layer {i}: the scores have {a.size} attention units and {m.size} MLP channels, the model has "
                f"{units} {unit} units and {geom.intermediate_size} channels: the scores are from another model "
                f"(scored: {model_name}). Score this model.")
        if not (np.isfinite(a).all() and np.isfinite(m).all()):
            raise PlanError(f"Layer {i}: the scores contain NaN or infinite values; rescore the model.")
        attention.append(a)
        mlp.append(m)
    return attention, mlp


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(ratio)) or not 0 <= float(ratio) < 1:
        raise PlanError(f"Ratio must be a number in [0, 1): the fraction of attention+MLP parameters to remove "
                        f"(0.2 removes 20%). Got {ratio!r}.")
    return float(ratio)


def _check_layer_arguments(skip_first, skip_last, round_to, n_layers) -> None:
    for name, value in (("skip_first", skip_first), ("skip_last", skip_last), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if name == "round_to" else 0):
            raise PlanError(f"{name} must be a whole number >= {1 if name == 'round_to' else 0}; got {value!r}.")
    if skip_first + skip_last >= n_layers:
        raise PlanError(f"Skipping {skip_first} first and {skip_last} last layers leaves none of the {n_layers} to prune.")


def _scores_unit(scores_meta: dict, geometry: list[LayerGeometry]) -> str:
    unit = scores_meta.get("unit") or default_unit(geometry[0])
    if unit not in UNIT_KINDS or (unit == "head" and any(g.n_rep != 1 for g in geometry)):
        raise PlanError(f"Scores unit '{unit}' does not fit this model (unit kinds: {UNIT_KINDS}; 'head' is for MHA).")
    return unit


def make_plan(scores, model, ratio, allocation: str = "uniform", skip_first: int = 0, skip_last: int = 0,
              layer_ratios=None, allow_empty_attention: bool = False, round_to: int = 1,
              block_scale: str = "auto") -> Plan:
    """Kept units and channels per layer that remove `ratio` of the attention+MLP parameters.

    scores: a `Scores` or its JSON dict; model: the model the scores are from (only its geometry and
    parameter counts are read). `ratio` may be None for the manual allocation. block_scale: what the
    global rankings divide a block's scores by (bip_core.allocation BLOCK_SCALES; "auto": mean-median where
    the scores record output medians, else mean).
    """
    if allocation not in ALLOCATORS:
        raise PlanError(f"Unknown allocation '{allocation}'; choose one of {', '.join(ALLOCATIONS)}.")
    ratio = None if (ratio is None and allocation in RATIO_OPTIONAL) else _check_ratio(ratio)
    layers, scores_meta = scores_parts(scores)
    block_scale = resolve_block_scale(block_scale, layers)
    geometry = model_geometry(model)
    unit = _scores_unit(scores_meta, geometry)
    attention, mlp = _score_arrays(layers, geometry, unit, scores_meta.get("model"))
    if callable(getattr(scores, "check_matches", None)) and scores_meta.get("geometry") is not None:
        scores.check_matches(model)  # the Scores object's own, finer check (widths, hidden size)
    n_layers = len(geometry)
    _check_layer_arguments(skip_first, skip_last, round_to, n_layers)

    costs = Costs.of_model(model, unit, geometry)
    request = Request(attention=attention, mlp=mlp, layers=layers, costs=costs, ratio=ratio,
                      active=active_layers(n_layers, skip_first, skip_last),
                      min_units=0 if allow_empty_attention else 1, layer_ratios=layer_ratios,
                      method=scores_meta.get("method"), block_scale=block_scale)
    keep_units, keep_channels = ALLOCATORS[allocation](request)
    keep_channels = round_channels(keep_channels, costs.channels, round_to)

    kept = [{"attention": top(attention[i], int(keep_units[i])), "mlp": top(mlp[i], int(keep_channels[i]))}
            for i in range(n_layers)]
    attn_removed = (costs.units - keep_units) / np.maximum(costs.units, 1)
    mlp_removed = (costs.channels - keep_channels) / costs.channels
    meta = {
        "method": scores_meta.get("method"),
        "ratio": ratio,
        "allocation": allocation,
        "block_scale": block_scale,
        "skip_first": int(skip_first),
        "skip_last": int(skip_last),
        "round_to": int(round_to),
        "allow_empty_attention": bool(allow_empty_attention),
        "layer_ratios": [[float(a), float(m)] for a, m in zip(attn_removed, mlp_removed)],
        "calibration": {k: scores_meta.get(k) for k in CALIBRATION_KEYS},
        "scores_options": scores_meta.get("options"),
        "geometry": geometry_record(geometry),
        "costs": costs.to_dict(),
    }
    plan = Plan(unit=unit, layers=kept, meta=meta)
    meta["removed_attention_mlp"] = plan.summary()["removed_attention_mlp"]
    return plan


__all__ = ["ALLOCATIONS", "BLOCK_SCALES", "Costs", "Plan", "make_plan", "scores_parts"]

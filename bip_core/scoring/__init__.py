"""Importance scores for every attention unit and MLP channel: LLM-BIP and its baselines.

    scores = score(model, tokenizer, method="bip", source="wiki-bb", samples=64, seq_len=128, seed=0)

Each method is one module with `PASS` ("weights", "forward" or "backward"), its option `DEFAULTS`
(and `CHOICES` for options with a fixed set of values) and a `Stats` class: one per decoder layer,
fed by the calibration driver (bip_core.calibration) when the method needs data, whose `finish()`
returns the layer's entry of the scores file.

Two pipelines run the same statistics: "whole" (the model in memory runs once per batch; what
accelerate dispatched included) and "layerwise" (bip_core.pipeline: one decoder layer onloaded
from a weight source at a time, for a skeleton on the meta device or a model larger than memory).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from ..architecture import default_unit, model_geometry
from ..calibration import input_device, run_calibration
from ..data import calibration_windows
from ..errors import ScoresError
from ..memory import PeakMemory
from ..pipeline import is_dispatched, module_name, run_layerwise
from ..scores import FORMAT, Scores, geometry_record
from . import bip, flap, magnitude, random, taylor, wanda_sp

METRICS = {"bip": bip, "flap": flap, "wanda-sp": wanda_sp, "taylor": taylor, "magnitude": magnitude,
           "random": random}
METHODS = tuple(METRICS)
MIN_CALIBRATION_TOKENS = 16
PIPELINES = ("auto", "whole", "layerwise")


def method_options(method: str) -> dict:
    """The options a method takes, with their defaults."""
    return dict(_metric(method).DEFAULTS)


def _metric(method: str):
    name = (method or "").strip().lower().replace("_", "-")
    if name not in METRICS:
        raise ScoresError(f"Unknown scoring method '{method}'. Choose one of: {', '.join(METHODS)}.")
    return METRICS[name]


def _options(method: str, metric, given: dict) -> dict:
    options = dict(metric.DEFAULTS)
    for key, value in given.items():
        if key not in options:
            known = ", ".join(options) or "none"
            raise ScoresError(f"Method '{method}' has no option '{key}' (its options: {known}).")
        default = options[key]
        choices = getattr(metric, "CHOICES", {}).get(key)
        if choices is not None and value not in choices:
            raise ScoresError(f"Option {key}='{value}' of method '{method}' must be one of {choices}.")
        if choices is None:
            try:
                value = type(default)(value)
            except (TypeError, ValueError) as err:
                raise ScoresError(f"Option {key} of method '{method}' must be a {type(default).__name__}.") from err
            valid, wanted = getattr(metric, "LIMITS", {}).get(key, (lambda _: True, ""))
            if not valid(value):
                raise ScoresError(f"Option {key}={value} of method '{method}' must be {wanted}.")
        options[key] = value
    return options


def _unit(model, unit: str | None) -> str:
    geometries = model_geometry(model)
    if unit is None:
        unit = "kv_group" if any(g.n_rep > 1 for g in geometries) else default_unit(geometries[0])
    for i, g in enumerate(geometries):
        try:
            if g.num_units(unit):  # a layer may have no attention left
                g.unit_heads(unit, 0)
        except ValueError as err:
            raise ScoresError(f"Layer {i}: {err}.") from err
    return unit


def _check_calibration(model, samples: int, seq_len: int) -> None:
    if samples < 1 or seq_len < 2 or samples * seq_len < MIN_CALIBRATION_TOKENS:
        raise ScoresError(f"Too few calibration tokens: {samples} samples x {seq_len} tokens; need at least "
                          f"{MIN_CALIBRATION_TOKENS} tokens in all (e.g. --samples 64 --seq-len 128).")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ScoresError(f"seq_len {seq_len} is longer than the model's context ({limit} tokens).")


def _jsonable(layer: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in layer.items()}


def is_skeleton(model) -> bool:
    """A model whose tensors are (some of them) on the meta device, not placed there by accelerate."""
    return any(p.device.type == "meta" for p in model.parameters()) and not is_dispatched(model)


def _pipeline(model, weights, pipeline: str, metric, method: str) -> str:
    """'auto': layerwise for a skeleton or when the weights come from elsewhere, else whole."""
    if pipeline not in PIPELINES:
        raise ScoresError(f"Unknown pipeline '{pipeline}'. Choose one of: {', '.join(PIPELINES)}.")
    if pipeline == "auto":
        from ..weights import ModuleWeights

        own = weights is None or (isinstance(weights, ModuleWeights) and weights.model is model)
        pipeline = "whole" if own and not is_skeleton(model) else "layerwise"
    if pipeline == "whole" and is_skeleton(model):
        raise ScoresError("The model is a skeleton on the meta device: score it with pipeline='layerwise' and "
                          "weight_source=open_weights(folder) (bip_core.weights).")
    if pipeline == "layerwise" and metric.PASS == "backward":
        raise ScoresError(f"{method} needs gradients through the whole model, which the layer-wise pipeline "
                          "does not compute: score it with pipeline='whole' (the model in memory), or use a "
                          "forward method (bip, flap, wanda-sp).")
    return pipeline


def _placement(model, weights, pipeline: str, device, dtype):
    """(weights, device, dtype) the scoring computes with (see `score`)."""
    model_dtype = next(model.parameters()).dtype
    if pipeline == "whole":
        here = input_device(model)
        if device is not None and torch.device(device) != here:
            raise ScoresError(f"The whole pipeline runs the model where it is ({here}), not on {device}: move the "
                              "model there, or score with pipeline='layerwise'.")
        if dtype is not None and dtype != model_dtype:
            raise ScoresError(f"The whole pipeline computes in the model's dtype ({model_dtype}), not {dtype}: "
                              "convert the model, or score with pipeline='layerwise'.")
        return weights, here, model_dtype
    if weights is None:
        if is_skeleton(model):
            raise ScoresError("The model is a skeleton on the meta device and no weights were given: pass "
                              "weight_source=open_weights(folder) (bip_core.weights).")
        from ..weights import ModuleWeights

        weights = ModuleWeights(model)
    from ..architecture import block_parts

    first = module_name(model, block_parts(model, 0).q_proj) + ".weight"
    device = torch.device(device) if device is not None else input_device(model)
    return weights, device, dtype or weights.dtype(first)


def _calibrate(metric, method: str, model, stats, input_ids, pipeline: str, weights, device, dtype,
               batch_size: int, progress, after_layer=None) -> list[dict]:
    """Run `stats` on the chosen pipeline and return each layer's finished entry."""
    if pipeline == "layerwise":
        return run_layerwise(model, weights, input_ids, stats, batch_size=batch_size, device=device, dtype=dtype,
                             progress=progress, desc=method, after_layer=after_layer)
    with getattr(metric, "context", lambda _: nullcontext())(model):
        if input_ids is not None:
            run_calibration(model, input_ids, stats, batch_size=batch_size, progress=progress, desc=method,
                            backward=metric.PASS == "backward")
        entries = []
        for i, s in enumerate(stats):
            entries.append(s.finish())
            if progress is not None and input_ids is None:
                progress(i + 1, len(stats), method)
    return entries


def score(model, tokenizer, method: str = "bip", source: str = "wiki-bb", samples: int = 64,
          seq_len: int = 128, seed: int = 0, unit: str | None = None, progress=None, *,
          batch_size: int = 8, model_name: str | None = None, weight_source=None, device=None, dtype=None,
          pipeline: str = "auto", after_layer=None, stats_mixin=None, **options) -> Scores:
    """Score every attention unit and MLP channel of `model` (see the module docstring).

    pipeline: "whole" (the model runs where it is, in its dtype; device/dtype, if given, must match),
    "layerwise" (one layer at a time from `weight_source` (bip_core.weights: `open_weights(folder)`,
    `ModuleWeights(model)`; default: the model itself, required for a skeleton on the meta device)
    onto `device` (default: the model's input device) in `dtype` (default: the weights' dtype)) or
    "auto" (layerwise for a skeleton or a weight source other than the model, else whole).
    (`weight_source`, not `weights`: magnitude has an option called `weights`.)
    after_layer(i, layer, entry): called once layer i is scored, with its onloaded copy, which it may
    change before its outputs feed layer i + 1 (sequential pruning, bip_core.sequential; layer-wise only).
    stats_mixin: a LayerStats subclass put in front of the method's own (extra statistics in `entry`).
    progress(done, total, desc) is called after each decoder layer of each calibration batch (or
    each layer for weight-only methods). `options` are the method's (`method_options(method)`)."""
    metric = _metric(method)
    method = next(name for name, m in METRICS.items() if m is metric)
    options = _options(method, metric, options)
    unit = _unit(model, unit)
    if after_layer is not None and pipeline == "auto":
        pipeline = "layerwise"
    if after_layer is not None and pipeline != "layerwise":
        raise ScoresError("after_layer changes layers as they are scored: it needs pipeline='layerwise'.")
    pipeline = _pipeline(model, weight_source, pipeline, metric, method)
    weights, device, dtype = _placement(model, weight_source, pipeline, device, dtype)
    uses_data = metric.PASS != "weights"
    input_ids = None
    if uses_data:
        _check_calibration(model, samples, seq_len)
        input_ids = calibration_windows(tokenizer, source, samples, seq_len, seed)
    started = time.perf_counter()
    with PeakMemory() as memory:
        stats_class = metric.Stats if stats_mixin is None else type("Mixed", (stats_mixin, metric.Stats), {})
        stats = [stats_class(model, i, unit, options, seed) for i in range(len(model_geometry(model)))]
        entries = _calibrate(metric, method, model, stats, input_ids, pipeline, weights, device, dtype,
                             batch_size, progress, after_layer)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT, "method": method,
        "model": model_name or getattr(model.config, "name_or_path", "") or type(model).__name__,
        "source": source if uses_data else "none", "samples": samples if uses_data else 0,
        "seq_len": seq_len if uses_data else 0, "seed": seed, "unit": unit,
        "tokens": samples * seq_len if uses_data else 0, "batch_size": batch_size if uses_data else 0,
        "seconds": round(seconds, 3), **memory.result(), "pipeline": pipeline, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "geometry": geometry_record(model_geometry(model)), "options": options,
    }
    return Scores(layers=[_jsonable(entry) for entry in entries], meta=meta)


__all__ = ["score", "METHODS", "METRICS", "PIPELINES", "method_options", "MIN_CALIBRATION_TOKENS", "Scores",
           "is_skeleton"]

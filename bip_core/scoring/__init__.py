"""Importance scores for every attention unit and MLP channel: LLM-BIP and its baselines.

    scores = score(model, tokenizer, method="bip", source="wiki-bb", samples=64, seq_len=128, seed=0)

Each method is one module with `PASS` ("weights", "forward" or "backward"), its option `DEFAULTS`
(and `CHOICES` for options with a fixed set of values) and a `Stats` class: one per decoder layer,
fed by the calibration driver (bip_core.calibration) when the method needs data, whose `finish()`
returns the layer's entry of the scores file.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from ..architecture import default_unit, model_geometry
from ..calibration import run_calibration
from ..data import calibration_windows
from ..errors import ScoresError
from ..memory import PeakMemory
from ..scores import FORMAT, Scores, geometry_record
from . import bip, flap, magnitude, random, taylor, wanda_sp

METRICS = {"bip": bip, "flap": flap, "wanda-sp": wanda_sp, "taylor": taylor, "magnitude": magnitude,
           "random": random}
METHODS = tuple(METRICS)
MIN_CALIBRATION_TOKENS = 16


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


def score(model, tokenizer, method: str = "bip", source: str = "wiki-bb", samples: int = 64,
          seq_len: int = 128, seed: int = 0, unit: str | None = None, progress=None, *,
          batch_size: int = 8, model_name: str | None = None, **options) -> Scores:
    """Score every attention unit and MLP channel of `model` (see the module docstring).

    progress(done, total, desc) is called after each decoder layer of each calibration batch (or
    each layer for weight-only methods). `options` are the method's (`method_options(method)`)."""
    metric = _metric(method)
    method = next(name for name, m in METRICS.items() if m is metric)
    options = _options(method, metric, options)
    unit = _unit(model, unit)
    uses_data = metric.PASS != "weights"
    if uses_data:
        _check_calibration(model, samples, seq_len)
        input_ids = calibration_windows(tokenizer, source, samples, seq_len, seed)
    n_layers = len(model_geometry(model))
    started = time.perf_counter()
    with PeakMemory() as memory, getattr(metric, "context", lambda _: nullcontext())(model):
        stats = [metric.Stats(model, i, unit, options, seed) for i in range(n_layers)]
        if uses_data:
            run_calibration(model, input_ids, stats, batch_size=batch_size, progress=progress,
                            desc=method, backward=metric.PASS == "backward")
        layers = []
        for i, s in enumerate(stats):
            layers.append(_jsonable(s.finish()))
            if progress is not None and not uses_data:
                progress(i + 1, n_layers, method)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT, "method": method,
        "model": model_name or getattr(model.config, "name_or_path", "") or type(model).__name__,
        "source": source if uses_data else "none", "samples": samples if uses_data else 0,
        "seq_len": seq_len if uses_data else 0, "seed": seed, "unit": unit,
        "tokens": samples * seq_len if uses_data else 0, "batch_size": batch_size if uses_data else 0,
        "seconds": round(seconds, 3), **memory.result(),
        "geometry": geometry_record(model_geometry(model)), "options": options,
    }
    return Scores(layers=layers, meta=meta)


__all__ = ["score", "METHODS", "METRICS", "method_options", "MIN_CALIBRATION_TOKENS", "Scores"]

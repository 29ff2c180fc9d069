"""Calibrate a layer, compress it, move on: sequential unit choice and compensation fitted layer by layer.

    done = calibrate_and_compress(model, tokenizer, plan, sequential=True, compensation="bias")
    pruned = prune_model(model, done.plan, bias_compensation=True, scores=done.scores, refit=done.refit)

The plan fixes how many attention units and MLP channels every layer keeps. Then, one decoder layer
at a time on the layer-wise pipeline (llm-compressor's calibrate_module -> compress_modules; the
per-layer loop of Wanda-sp's `prune_wanda_sp`):

1. the layer is scored by the plan's method on its inputs, which with `sequential=True` are the
   outputs of the layers before it *after* they were pruned (with False: of the dense layers);
2. with `sequential=True` it keeps its own top-scored units and channels, as many as the plan says
   (with False: the plan's own units and channels);
3. its compensation is fitted on those same inputs: "bias" puts back the mean of what the removed
   columns of o_proj / down_proj contributed (FLAP), "refit" refits the kept columns by ridge least
   squares (bip_core.refit), "none" does neither;
4. with `sequential=True` the layer is pruned in place (the removed columns zeroed and the kept ones
   compensated: the same outputs as slicing), so the next layer sees what the pruned model gives.

The result holds the plan with the chosen units (`meta["sequential"]`), the scores measured on
the way (their mean inputs are the ones the bias was fitted on) and, for "refit", the refit
columns and biases per layer (bip_core.refit_store: in memory, or, when the model is streamed from
a weight source, in temporary files written as each layer is fitted and removed by `close()`),
which `surgery.prune_model(..., refit=...)` and `streamed_export.prune_and_export(..., refit=...)`
write into the pruned model. Only one layer's input covariances (float32) exist at a time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .allocation import top
from .calibration import LayerStats, RunningMoments, layer_parts
from .errors import PlanError
from .plan import Plan
from .refit import refit_linear
from .refit_store import RefitFiles, RefitMemory
from .scoring import METRICS
from .surgery import COMPENSATED, compensation_bias, kept_indices

COMPENSATIONS = ("none", "bias", "refit")
REFIT_ALPHA = 1e-3  # ridge: alpha x the mean variance of the kept inputs (chosen on the valid split)
COVARIANCE = {"o_proj": "o_input_covariance", "down_proj": "down_input_covariance"}
FORWARD_METHODS = tuple(name for name, metric in METRICS.items() if metric.PASS == "forward")  # one pass to repeat
# A dense (not sequential) refit keeps the plan's units: its pass runs the cheapest forward statistics, which carry
# the means and covariances it needs (bip's probes would cost time and memory for nothing).
MOMENTS_METHOD = "wanda-sp"


class InputMoments(LayerStats):
    """Mixed in front of a method's statistics: the covariance of o_proj's and down_proj's inputs (for refit),
    handed over in the layer's entry under COVARIANCE's keys and never saved."""

    def __init__(self, *args):
        super().__init__(*args)
        self.input_moments = {name: RunningMoments(covariance=True) for name in COVARIANCE}

    def on_block(self, taps) -> None:
        super().on_block(taps)
        self.input_moments["o_proj"].add(taps.z)
        self.input_moments["down_proj"].add(taps.m)

    def finish(self) -> dict:
        out = super().finish()
        moments, self.input_moments = self.input_moments, {}  # the next layers' statistics must not keep them
        for name, running in moments.items():
            if running.count:
                out[COVARIANCE[name]] = take_covariance(running)
        return out


def take_covariance(moments: RunningMoments) -> torch.Tensor:
    """The covariance `moments` gathered, made in place from its scatter matrix, which it gives up
    (RunningMoments.take_m2)."""
    return moments.take_m2().cpu().div_(max(1, moments.count))


@dataclass
class Compressed:
    plan: Plan                       # the kept units and channels (chosen sequentially, or the given ones)
    scores: object                   # Scores measured on the way (mean inputs for bias compensation)
    refit: RefitMemory | None = None  # per layer {"o_proj": (weight [out, kept], bias), "down_proj": ...}

    def close(self) -> None:
        """Let go of the refit tensors (and their temporary files)."""
        if self.refit is not None:
            self.refit.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def choose_kept(entry: dict, counts: tuple[int, int]) -> dict:
    """The layer's top-scored attention units and MLP channels, as many as `counts` = (units, channels)."""
    return {"attention": top(np.asarray(entry["attention"], dtype=np.float64), counts[0]),
            "mlp": top(np.asarray(entry["mlp"], dtype=np.float64), counts[1])}


def compensate(weight: torch.Tensor, bias: torch.Tensor | None, columns: list[int], entry: dict, name: str,
               compensation: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kept columns of `weight`, bias) of o_proj or down_proj after removing the other columns."""
    mean = entry[COMPENSATED[name]]
    if compensation == "refit":
        return refit_linear(weight, bias, torch.as_tensor(mean), entry[COVARIANCE[name]], columns, alpha)
    kept = weight[:, torch.as_tensor(columns, dtype=torch.long, device=weight.device)]
    added = compensation_bias(weight, columns, mean) if compensation == "bias" else None
    if added is None:
        return kept, bias
    return kept, added if bias is None else bias + added


def mask_in_place(linear: torch.nn.Linear, columns: list[int], kept: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Zero the removed input columns of `linear` and give it the compensated kept columns and bias."""
    full = torch.zeros_like(linear.weight)
    full[:, torch.as_tensor(columns, dtype=torch.long, device=full.device)] = kept.to(full)
    linear.weight.data = full
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.to(full), requires_grad=False)


class Compressor:
    """The after_layer callback: choose, compensate and (sequentially) prune each layer as it is scored."""

    def __init__(self, plan: Plan, sequential: bool, compensation: str, alpha: float,
                 refit: RefitMemory | None = None):
        self.plan = Plan(unit=plan.unit, layers=copy.deepcopy(plan.layers), meta=dict(plan.meta))
        self.counts = list(zip(*plan.kept_counts()))
        self.sequential, self.compensation, self.alpha = sequential, compensation, alpha
        self.refit = refit  # where refit tensors go (compensation "refit")

    def __call__(self, i: int, layer: torch.nn.Module, entry: dict) -> bool:
        if self.sequential:
            self.plan.layers[i] = choose_kept(entry, self.counts[i])
        parts, kept, fitted = layer_parts(layer), kept_indices(self.plan, i), {}
        for name in COMPENSATED:
            linear, columns = getattr(parts, name), kept[name][1]
            weight, bias = compensate(linear.weight.detach(), None if linear.bias is None else linear.bias.detach(),
                                      columns, entry, name, self.compensation, self.alpha)
            if self.compensation == "refit":
                fitted[name] = (weight, bias)
            if self.sequential:
                mask_in_place(linear, columns, weight, bias)
            entry.pop(COVARIANCE[name], None)  # let it go before the next solve (and far too large for a scores file)
        if fitted:  # bias compensation is derived again from the scores' means when the model is pruned
            self.refit.put(i, fitted)
        return self.sequential  # a pruned layer's outputs are computed again for the next layer


def calibrate_and_compress(model, tokenizer, plan: Plan, *, sequential: bool = True, compensation: str = "bias",
                           alpha: float = REFIT_ALPHA, method: str | None = None, progress=None,
                           refit_on_disk: bool | None = None, **score_args) -> Compressed:
    """Score `model` layer by layer with the plan's method (or `method`), choosing (sequential) and
    compensating each layer on its way (see the module docstring). `score_args` go to `scoring.score`
    (source, samples, seq_len, seed, weight_source, device, dtype, batch_size, the method's options).
    refit_on_disk: keep refit tensors in temporary files (default: when a weight_source is given, i.e. the
    model is streamed); close() the result to remove them."""
    from .scoring import score

    if compensation not in COMPENSATIONS:
        raise PlanError(f"Unknown compensation '{compensation}'; choose one of {', '.join(COMPENSATIONS)}.")
    plan.check_matches(model)
    method = method or plan.meta.get("method")
    without_forward = method is None or (method in METRICS and method not in FORWARD_METHODS)
    if without_forward and (sequential or compensation != "none"):
        raise PlanError(f"Sequential pruning and compensation rescore each layer on its inputs with a forward method "
                        f"({', '.join(FORWARD_METHODS)}); this plan's method is {method!r}: pass method='wanda-sp' "
                        "(or another).")
    on_disk = score_args.get("weight_source") is not None if refit_on_disk is None else refit_on_disk
    store = (RefitFiles() if on_disk else RefitMemory()) if compensation == "refit" else None
    compressor = Compressor(plan, sequential, compensation, alpha, store)
    try:
        scores = score(model, tokenizer, method, progress=progress, after_layer=compressor,
                       stats_mixin=InputMoments if compensation == "refit" else None, **score_args)
    except BaseException:
        if store is not None:
            store.close()
        raise
    scores.meta.update({"sequential": sequential, "compensation": compensation})
    compressor.plan.meta.update({"sequential": sequential, "compensation": compensation,
                                 "refit_alpha": alpha if compensation == "refit" else None})
    return Compressed(compressor.plan, scores, store)


def compensation_record(compensation: str, sequential: bool) -> dict:
    """How a pruned model was compensated, as exports, summaries and sweep rows record it (bias_compensation:
    the older boolean field)."""
    return {"compensation": compensation, "bias_compensation": compensation == "bias", "sequential": bool(sequential)}


def needs_pass(compensation: str, sequential: bool) -> bool:
    """Whether pruning with these settings runs a calibration pass first (bias and none need none)."""
    return sequential or compensation == "refit"


def compress_like(model, tokenizer, plan: Plan, scores, *, sequential: bool, compensation: str,
                  alpha: float = REFIT_ALPHA, progress=None, **placement) -> Compressed:
    """calibrate_and_compress with the method, options and calibration text that made `scores`; as given
    (no pass) when neither sequential nor refit is asked. A dense refit runs MOMENTS_METHOD's statistics instead
    of the method's (the same means and covariances, fewer sums) and returns `scores` as given. placement: weight_source, device, dtype, pipeline,
    refit_on_disk."""
    if not needs_pass(compensation, sequential):
        return Compressed(plan, scores)
    meta = scores.meta
    method, options = meta.get("method"), meta.get("options") or {}
    dense_refit = not sequential and method in FORWARD_METHODS
    if dense_refit:  # the pass needs only the inputs' means and covariances, not the method's statistics
        method, options = MOMENTS_METHOD, {}
    done = calibrate_and_compress(model, tokenizer, plan, sequential=sequential, compensation=compensation,
                                  alpha=alpha, method=method, source=meta.get("source", "wiki-bb"),
                                  samples=meta.get("samples") or 64, seq_len=meta.get("seq_len") or 128,
                                  seed=meta.get("seed", 0), unit=plan.unit, progress=progress,
                                  **{**placement, "pipeline": "layerwise"}, **options)
    return Compressed(done.plan, scores, done.refit) if dense_refit else done


__all__ = ["calibrate_and_compress", "compress_like", "needs_pass", "compensation_record", "Compressed", "COMPENSATIONS", "REFIT_ALPHA", "InputMoments", "choose_kept"]

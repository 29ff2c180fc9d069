"""`python -m bip_core prune --model SPEC --scores scores.json (--plan plan.json | --ratio R --allocation NAME)
[--bias-compensation] [--streamed] --out DIR`

Applies the plan (given, or made from the scores), exports the smaller model to DIR and prints a JSON
summary: params before/after, per-layer shapes, time.

Two ways, same export: the model loaded whole, pruned in memory and exported; or streamed
(`--streamed`, or when the model is loaded layer-wise because it does not fit): every tensor read from
the model folder's safetensors, sliced and written out one at a time, never the whole model in memory.
Streamed with `--compensation refit`, each layer's refit weights are written to temporary files as the
calibration pass fits them (removed when the export is written, or fails).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..practice import PRACTICE, practice_text, resolve_compensation, resolve_sequential
from .common import add_device_arguments, add_model_argument, load_kwargs, print_json
from .plan import add_plan_arguments, plan_from_args

def add_arguments(parser) -> None:
    add_model_argument(parser, default=None)
    add_device_arguments(parser)
    parser.add_argument("--scores", default=None,
                        help="scores JSON (needed to make a plan, and for --bias-compensation)")
    parser.add_argument("--plan", default=None, help="a plan JSON from `python -m bip_core plan`")
    add_plan_arguments(parser, required=False)
    parser.add_argument("--bias-compensation", action="store_true",
                        help="FLAP-style: put the mean output of pruned columns back as o_proj/down_proj biases "
                             "(= --compensation bias)")
    parser.add_argument("--compensation", choices=("auto", "none", "bias", "refit"), default="auto",
                        help="none; bias (FLAP's mean); refit (ridge least squares of the kept o_proj/down_proj "
                             "columns, fitted layer by layer on calibration inputs). auto (default): the method's "
                             f"own practice ({practice_text()}; none for the rest), as the app and sweep do; "
                             "none when no --scores are given")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="choose each layer's units on the outputs of the already-pruned layers before it "
                             "(the plan fixes the counts), as Wanda-sp's original does. Default: the method's "
                             "practice (see --compensation); off when no --scores are given")
    parser.add_argument("--refit-alpha", type=float, default=None,
                        help="refit's ridge, relative to the kept inputs' mean variance (default 1e-3)")
    parser.add_argument("--streamed", action="store_true",
                        help="prune and export tensor by tensor from the model folder's safetensors, without "
                             "loading the model (for models larger than memory)")
    parser.add_argument("--out", required=True, help="export folder (created; an older export there is replaced)")


@dataclass
class Base:
    """The model to prune: `model` (loaded, or a skeleton on the meta device), and for the streamed way the
    weight source its tensors are read from."""

    model: object
    tokenizer: object
    spec: str
    weights: object | None = None
    device: object = None
    dtype: object = None


def _base(args, spec: str) -> Base:
    """The model whole, or (streamed, or too big to hold) a meta skeleton whose weights stay on disk."""
    from ..loading import load_model

    options = load_kwargs(args)
    if args.streamed:
        options["pipeline"] = "layerwise"
    loaded = load_model(spec, **options)
    layerwise = loaded.pipeline == "layerwise"
    return Base(loaded.model, loaded.tokenizer, loaded.spec, loaded.weights if layerwise else None, loaded.device,
                loaded.dtype)


def _practice(args, plan, scores) -> tuple[str, bool]:
    """(compensation, sequential): as asked, and what is not asked as the method's practice
    (bip_core.practice), which needs the scores: without them, none and one pass (said on stderr)."""
    compensation = "bias" if args.bias_compensation and args.compensation == "auto" else args.compensation
    sequential = "auto" if args.sequential is None else args.sequential
    if scores is None:
        if (compensation, sequential) == ("auto", "auto") and PRACTICE.get(plan.meta.get("method")):
            print(f"note: no --scores, so pruned without compensation in one pass; {plan.meta.get('method')}'s "
                  "practice (--compensation auto) needs the scores.", file=sys.stderr)
        return ("none" if compensation == "auto" else compensation), sequential is True
    return resolve_compensation(compensation, scores), resolve_sequential(sequential, scores)


def _check_scores(args, plan, scores) -> None:
    """Refuse, before loading the model, a sequential or compensated prune without the scores it needs."""
    from ..errors import PlanError

    if scores is None and (plan is None or args.sequential or args.bias_compensation
                           or args.compensation not in ("auto", "none")):
        raise PlanError("--scores is needed to make a plan, for compensation and for sequential pruning: they "
                        "rescore with the plan's method and calibration. Give --scores (or prune with "
                        "--compensation none --no-sequential).")


def _compressed(args, base: Base, plan, scores, practice: tuple[str, bool]):
    """The Compressed (plan, scores, refit) after the sequential / refit pass, or as given when neither is
    asked; streamed, its refit tensors are in temporary files until it is closed."""
    from ..sequential import REFIT_ALPHA, compress_like

    compensation, sequential = practice
    placement = {"weight_source": base.weights, "device": base.device, "dtype": base.dtype,
                 "pipeline": "layerwise"} if base.weights is not None else {}
    return compress_like(base.model, base.tokenizer, plan, scores, sequential=sequential, compensation=compensation,
                         alpha=args.refit_alpha or REFIT_ALPHA, **placement)


def _prune_and_export(args, base: Base, plan, scores, practice: tuple[str, bool],
                      seconds: dict) -> tuple[Path, object]:
    t = time.perf_counter()
    with _compressed(args, base, plan, scores, practice) as done:
        seconds["calibrate"] = time.perf_counter() - t
        return _write(args, base, done, practice[0], seconds), done.plan


def _write(args, base: Base, done, compensation: str, seconds: dict) -> Path:
    """Prune with `done`'s plan and compensation and export; streamed when the model's weights stay on disk."""
    from ..export import export_model
    from ..sequential import compensation_record
    from ..streamed_export import prune_and_export
    from ..surgery import prune_model

    plan, scores, refit = done.plan, done.scores, done.refit
    provenance = {"base_model": base.spec, **compensation_record(compensation, plan.meta.get("sequential"))}
    t = time.perf_counter()
    if base.weights is not None:
        folder = prune_and_export(base.weights, base.model.config, base.tokenizer, plan, args.out,
                                  bias_compensation=compensation == "bias", scores=scores, provenance=provenance,
                                  refit=refit)
        seconds["prune"], seconds["export"] = 0.0, time.perf_counter() - t  # pruned while written
        return folder
    pruned = prune_model(base.model, plan, bias_compensation=compensation == "bias", scores=scores, refit=refit)
    seconds["prune"] = time.perf_counter() - t
    t = time.perf_counter()
    folder = export_model(pruned, base.tokenizer, plan, args.out, provenance=provenance)
    seconds["export"] = time.perf_counter() - t
    return folder


def run(args) -> int:
    from ..architecture import count_params
    from ..errors import PlanError
    from ..plan import Plan
    from ..scores import Scores

    if (args.plan is None) == (args.ratio is None and args.layer_ratios is None):
        raise PlanError("Give either --plan plan.json or --ratio R (with --allocation), not both and not neither.")
    seconds, start = {}, time.perf_counter()
    scores = Scores.load(args.scores) if args.scores else None
    plan = Plan.load(args.plan) if args.plan else None
    _check_scores(args, plan, scores)
    practice = _practice(args, plan, scores)
    named = scores.meta.get("model") if scores else (plan.meta.get("calibration") or {}).get("model")
    base = _base(args, args.model or named or "default")
    seconds["load"] = time.perf_counter() - start

    t = time.perf_counter()
    if plan is None:
        plan = plan_from_args(args, scores, base.model)
    seconds["plan"] = time.perf_counter() - t
    folder, plan = _prune_and_export(args, base, plan, scores, practice, seconds)
    seconds["total"] = time.perf_counter() - start

    config = json.loads((folder / "config.json").read_text())
    before, after = count_params(base.model), config["bip_studio"]["params"]
    summary = plan.summary()
    print_json({
        "out": str(folder), "streamed": base.weights is not None,
        "method": plan.meta.get("method"), "unit": plan.unit, "allocation": plan.meta.get("allocation"),
        "ratio": plan.meta.get("ratio"),
        "compensation": practice[0],
        "sequential": bool(plan.meta.get("sequential")),
        "params_before": before["total"], "params_after": after["total"],
        "attention_mlp_before": before["attention_mlp"], "attention_mlp_after": after["attention_mlp"],
        "removed_attention_mlp": summary["removed_attention_mlp"], "removed_total": summary["removed_total"],
        "layer_shapes": config["bip_layer_shapes"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    })
    return 0

"""`python -m bip_core prune --model SPEC --scores scores.json (--plan plan.json | --ratio R --allocation NAME)
[--bias-compensation] --out DIR`

Applies the plan (given, or made from the scores), exports the smaller model to DIR and prints a JSON
summary: params before/after, per-layer shapes, time.
"""
from __future__ import annotations

import time

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
                        help="FLAP-style: put the mean output of pruned columns back as o_proj/down_proj biases")
    parser.add_argument("--out", required=True, help="export folder (created; an older export there is replaced)")


def run(args) -> int:
    from ..architecture import count_params
    from ..errors import PlanError
    from ..export import export_model, layer_shapes
    from ..loading import load_model
    from ..plan import Plan
    from ..scores import Scores
    from ..surgery import prune_model

    if (args.plan is None) == (args.ratio is None and args.layer_ratios is None):
        raise PlanError("Give either --plan plan.json or --ratio R (with --allocation), not both and not neither.")
    if args.scores is None and (args.plan is None or args.bias_compensation):
        raise PlanError("--scores is needed to make a plan and for --bias-compensation.")
    seconds, start = {}, time.perf_counter()
    scores = Scores.load(args.scores) if args.scores else None
    plan = Plan.load(args.plan) if args.plan else None
    named = scores.meta.get("model") if scores else (plan.meta.get("calibration") or {}).get("model")
    loaded = load_model(args.model or named or "default", **load_kwargs(args))
    seconds["load"] = time.perf_counter() - start

    t = time.perf_counter()
    if plan is None:
        plan = plan_from_args(args, scores, loaded.model)
    seconds["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    pruned = prune_model(loaded.model, plan, bias_compensation=args.bias_compensation, scores=scores)
    seconds["prune"] = time.perf_counter() - t
    t = time.perf_counter()
    provenance = {"base_model": loaded.spec, "bias_compensation": args.bias_compensation}
    folder = export_model(pruned, loaded.tokenizer, plan, args.out, provenance=provenance)
    seconds["export"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start

    before, after = count_params(loaded.model), count_params(pruned)
    summary = plan.summary()
    print_json({
        "out": str(folder),
        "method": plan.meta.get("method"), "unit": plan.unit, "allocation": plan.meta.get("allocation"),
        "ratio": plan.meta.get("ratio"), "bias_compensation": args.bias_compensation,
        "params_before": before["total"], "params_after": after["total"],
        "attention_mlp_before": before["attention_mlp"], "attention_mlp_after": after["attention_mlp"],
        "removed_attention_mlp": summary["removed_attention_mlp"], "removed_total": summary["removed_total"],
        "layer_shapes": layer_shapes(pruned),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    })
    return 0

"""`python -m bip_core plan --scores scores.json --ratio R --allocation NAME [--block-scale auto|mean|mean-median
--skip-first N --skip-last N --round-to 8 --allow-empty-attention --layer-ratios JSON|FILE --model SPEC]
--out plan.json`

Prints the plan summary as JSON. The model (default: the one named in the scores) is only read for its
geometry and parameter counts.
"""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_device_arguments, add_model_argument, load_kwargs, print_json


def add_plan_arguments(parser, required: bool = True) -> None:
    """Arguments that make a plan from scores (shared with `prune`)."""
    from ..plan import ALLOCATIONS, BLOCK_SCALES

    parser.add_argument("--ratio", type=float, required=required,
                        help="fraction of attention+MLP parameters to remove, in [0, 1)")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="uniform", help="default uniform")
    parser.add_argument("--block-scale", choices=("auto", *BLOCK_SCALES), default="auto",
                        help="what global and global-energy divide a block's scores by: the mean token norm of its "
                             "output, or sqrt(mean x median), which massive-activation tokens sway less; auto "
                             "(default): mean-median where the scores record the median")
    parser.add_argument("--skip-first", type=int, default=0, help="leave the first N layers whole")
    parser.add_argument("--skip-last", type=int, default=0, help="leave the last N layers whole")
    parser.add_argument("--round-to", type=int, default=1, help="kept MLP channels a multiple of this (e.g. 8)")
    parser.add_argument("--allow-empty-attention", action="store_true",
                        help="allow removing every attention unit of a layer")
    parser.add_argument("--layer-ratios", default=None, metavar="JSON|FILE",
                        help="manual allocation: [[attention_ratio, mlp_ratio], ...] one per layer, inline or a "
                             "file; a plan file gives its own per-layer ratios as a starting point")


def _layer_ratios(value):
    if value is None:
        return None
    path = Path(value).expanduser()
    data = json.loads(path.read_text()) if path.is_file() else json.loads(value)
    if isinstance(data, dict):  # a plan: start from its per-layer ratios
        data = data["meta"]["layer_ratios"]
    return data


def plan_from_args(args, scores, model):
    from ..plan import make_plan

    return make_plan(scores, model, args.ratio, allocation=args.allocation, skip_first=args.skip_first,
                     skip_last=args.skip_last, layer_ratios=_layer_ratios(args.layer_ratios),
                     allow_empty_attention=args.allow_empty_attention, round_to=args.round_to,
                     block_scale=args.block_scale)


def model_spec(args, scores) -> str:
    """--model, else the model the scores name, else the default model."""
    return args.model or scores.meta.get("model") or "default"


def add_arguments(parser) -> None:
    add_model_argument(parser, default=None)
    add_device_arguments(parser)
    parser.add_argument("--scores", required=True, help="scores JSON from `python -m bip_core score`")
    add_plan_arguments(parser, required=False)
    parser.add_argument("--out", required=True, help="where to write the plan JSON")


def run(args) -> int:
    from ..errors import PlanError
    from ..loading import load_model
    from ..scores import Scores

    scores = Scores.load(args.scores)
    if args.ratio is None and args.allocation != "manual":
        raise PlanError("--ratio is required (except for --allocation manual with --layer-ratios).")
    loaded = load_model(model_spec(args, scores), **load_kwargs(args))
    plan = plan_from_args(args, scores, loaded.model)
    path = plan.save(args.out)
    print_json({"out": str(path), **plan.summary(loaded.model)})
    return 0

"""`python -m bip_core sweep --model SPEC --methods bip,flap,... --ratios 0.2,0.5 --allocations uniform,global
--data wiki-bb --samples N --seq-len L --windows W --out results.csv`

Scores once per method, evaluates every ratio and allocation (perplexity, paper protocol), writes the
table (CSV, rewritten after every row) and a plotly chart next to it (results.html: PPL vs ratio per
method, log y). Method options: `bip:aggregation=rms`, `bip:lipschitz=measured`, ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..plan import ALLOCATIONS
from ..practice import PRACTICE, practice_text
from .common import (WHOLE_ONLY, add_device_arguments, add_model_argument, load_kwargs, print_json,
                     score_kwargs)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser) -> None:
    from ..data import describe_sources

    add_model_argument(parser)
    add_device_arguments(parser, WHOLE_ONLY)
    parser.add_argument("--methods", type=_names, default=["bip"],
                        help="comma-separated scoring methods, each optionally with options: "
                             "bip,bip:aggregation=rms,flap,wanda-sp,magnitude,random (default bip)")
    parser.add_argument("--ratios", type=_floats, default=[0.2, 0.5],
                        help="fractions of attention+MLP parameters to remove (default 0.2,0.5)")
    parser.add_argument("--allocations", type=_names, default=["uniform"],
                        help=f"comma-separated, of {', '.join(a for a in ALLOCATIONS if a != 'manual')} (default uniform)")
    parser.add_argument("--data", default="wiki-bb", help=f"calibration text: {', '.join(describe_sources())}")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seq-len", type=int, default=128, help="calibration tokens per window (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppl", default="wiki-bb", metavar="SOURCE", help="perplexity text (default wiki-bb)")
    parser.add_argument("--split", default=None, help="perplexity split (default: the papers' split)")
    parser.add_argument("--ppl-seq-len", type=int, default=128, help="perplexity window length (default 128)")
    parser.add_argument("--windows", type=int, default=None, help="perplexity windows (default all)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--compensation", choices=("auto", "none", "bias", "refit"), default=None,
                        help=f"auto (default): each method's own practice ({practice_text()}; none for the "
                             "rest and for uncentred scores); bias: FLAP's mean; refit: ridge least squares of the "
                             "kept o_proj/down_proj columns (one more calibration pass per plan)")
    parser.add_argument("--bias-compensation", choices=("auto", "on", "off"), default=None,
                        help="the older spelling: on = --compensation bias, off = none")
    parser.add_argument("--sequential", choices=("auto", "on", "off"), default="auto",
                        help="choose each layer's units on the already-pruned layers' outputs (auto: the method's "
                             f"practice, on for {', '.join(m for m, (_, seq) in PRACTICE.items() if seq)}); one more "
                             "calibration pass per plan")
    parser.add_argument("--refit-alpha", type=float, default=None,
                        help="refit's ridge, relative to the kept inputs' mean variance (default 1e-3)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model's row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="CSV path; the chart goes next to it as .html")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    import torch

    from ..loading import load_model
    from ..sweep import sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, **load_kwargs(args))

    def progress(done, total, desc):
        print(f"[{done}/{total}] {desc}", file=sys.stderr, flush=True)

    table = sweep(loaded.model, loaded.tokenizer, methods=args.methods, ratios=args.ratios,
                  allocations=args.allocations, data=args.data, samples=args.samples, seq_len=args.seq_len,
                  seed=args.seed, ppl_source=args.ppl, ppl_split=args.split, windows=args.windows,
                  ppl_seq_len=args.ppl_seq_len, batch_size=args.batch_size, compensation=args.compensation or args.bias_compensation or "auto",
                  sequential={"on": True, "off": False}.get(args.sequential, "auto"), refit_alpha=args.refit_alpha,
                  dense=not args.no_dense, model_name=args.model, out=args.out,
                  score_options=score_kwargs(loaded),
                  progress=None if args.quiet else progress)
    out = Path(args.out)
    shown = table[["method", "allocation", "ratio", "ppl", "params", "score_seconds", "error"]]
    print_json({"csv": str(out), "chart": str(out.with_suffix(".html")), "rows": len(table),
                "results": json.loads(shown.to_json(orient="records"))})
    return 0

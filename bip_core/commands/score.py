"""`python -m bip_core score --model SPEC --method NAME --data SOURCE --samples N --seq-len L --seed S
[--unit U] [--lipschitz directional|measured|zero] [--aggregation mean_abs|rms|std] [--option KEY=VALUE] --out scores.json`"""
from __future__ import annotations

import sys

from .common import add_device_arguments, add_model_argument, load_kwargs, print_json, score_kwargs


def add_arguments(parser) -> None:
    from ..architecture import UNIT_KINDS
    from ..data import describe_sources
    from ..scoring import METHODS, METRICS

    add_model_argument(parser)
    add_device_arguments(parser)
    parser.add_argument("--method", default="bip", help=f"one of {', '.join(METHODS)} (default bip)")
    parser.add_argument("--data", default="wiki-bb", help=f"calibration text: {', '.join(describe_sources())}")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unit", choices=UNIT_KINDS, default=None,
                        help="attention unit (default: head for MHA, kv_group for GQA)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    bip_choices = METRICS["bip"].CHOICES
    parser.add_argument("--lipschitz", choices=bip_choices["lipschitz"], default=None,
                        help="bip attention factor: directional (default, the MLP's measured gain along the "
                             "unit's change), measured (the bound 1 + L_l) or zero (none)")
    parser.add_argument("--aggregation", choices=bip_choices["aggregation"], default=None,
                        help="bip: channel aggregation over tokens (std = centred variant)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other method option, e.g. norm=l1 (magnitude), variant=vector (taylor)")
    parser.add_argument("--out", required=True, help="where to write the scores JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args) -> dict:
    from ..options import parse_options

    options = parse_options(args.option, "--option", "--option norm=l1")
    for key in ("lipschitz", "aggregation"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def run(args) -> int:
    from tqdm import tqdm

    from ..loading import load_model
    from ..scoring import score

    options = _options(args)
    loaded = load_model(args.model, **load_kwargs(args))
    scale = score_kwargs(loaded)  # weights / device / pipeline for the layer-wise score()
    bar = None if args.quiet else tqdm(total=0, file=sys.stderr, unit="layer", desc=args.method)

    def progress(done, total, desc):
        bar.total = total
        bar.set_description(desc, refresh=False)
        bar.update(done - bar.n)

    try:
        scores = score(loaded.model, loaded.tokenizer, method=args.method, source=args.data, samples=args.samples,
                       seq_len=args.seq_len, seed=args.seed, unit=args.unit, batch_size=args.batch_size,
                       progress=None if bar is None else progress, model_name=args.model,
                       **scale, **options)
    finally:
        if bar is not None:
            bar.close()
    path = scores.save(args.out)
    meta = scores.meta
    print_json({"out": str(path), **{k: meta[k] for k in ("method", "model", "unit", "source", "samples", "seq_len",
                                                          "seed", "seconds", "peak_memory_bytes", "options")}})
    return 0

"""`python -m bip_core info --model SPEC [--json]`"""
from __future__ import annotations

from .common import add_model_argument, print_json


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from ..loading import load_model

    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code)
    info = loaded.info()
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return 0

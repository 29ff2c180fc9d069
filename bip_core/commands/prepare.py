"""`python -m bip_core prepare`: idempotent one-time set-up (default model, offline data)."""
from __future__ import annotations

from .common import print_json


def add_arguments(parser) -> None:
    parser.add_argument("--skip-data", action="store_true", help="only convert the default model")


def run(args) -> int:
    from ..prepare import prepare_all

    print_json(prepare_all(data=not args.skip_data))
    return 0

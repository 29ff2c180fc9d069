"""Arguments shared by several subcommands, and JSON printing."""
from __future__ import annotations

import json
import sys


def add_model_argument(parser, default: str = "default") -> None:
    parser.add_argument("--model", default=default,
                        help="'default' (embedded SmolLM2-135M-Instruct), a local folder, or a Hub id")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom modeling code from the model folder (off by default)")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")

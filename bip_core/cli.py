"""`python -m bip_core <command>`: one subcommand per module in bip_core/commands/.

Each command module has `add_arguments(parser)` and `run(args) -> int`. Errors raised on purpose
(BipError, e.g. ModelTooLargeError from the memory guard) are printed as one readable line and exit
with status 2; so is an allocator's out-of-memory error, should the guard's estimate be beaten.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import BipError

COMMANDS = {
    "info": "architecture summary of a model",
    "prepare": "one-time set-up: convert the default model, extract offline data and tasks",
    "score": "score attention units and MLP channels with LLM-BIP or a baseline",
    "plan": "turn scores into a pruning plan (kept units per layer)",
    "prune": "apply a plan: a physically smaller model, exported to a folder",
    "eval": "perplexity, zero-shot accuracy and speed of a model or an export",
    "sweep": "score once per method, evaluate every ratio, write a table and a chart",
}


def _command_module(name: str):
    try:
        return importlib.import_module(f".commands.{name}", __package__)
    except ModuleNotFoundError as err:
        if err.name == f"{__package__}.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bip_core", description="BIP Studio: structured pruning with LLM-BIP")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = _command_module(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def exit_on_sigterm() -> None:
    """Let SIGTERM end the process as Ctrl-C would, unwinding: temporary files (a streamed refit's, a half-written
    export) are removed instead of left behind. Installed by `python -m bip_core`, not by `main` (a library call)."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BipError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad arguments caught by library checks
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the memory guard's estimate was beaten: still one line, no traceback
        if not _out_of_memory(err):
            raise
        print(f"error: out of memory ({type(err).__name__}). {OUT_OF_MEMORY_HINT}", file=sys.stderr)
        return 2


OUT_OF_MEMORY_HINT = ("Ways out: --dtype bfloat16, --pipeline layerwise (score, prune), fewer --samples or a "
                      "smaller --batch-size, or --max-memory with --offload-folder.")


def _out_of_memory(err: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (a RuntimeError), without importing torch here."""
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"

"""`python -m bip_core info --model SPEC [--dtype D --device D --max-memory ... --pipeline P] [--json]`

Reads no weights (a meta skeleton and safetensors headers): the architecture, the bytes of the weights
in each dtype, the layer-wise pipeline's resident bytes, and whether the model fits here.
"""
from __future__ import annotations

from .common import add_device_arguments, add_model_argument, load_kwargs, print_json


def add_arguments(parser) -> None:
    add_model_argument(parser)
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _print_memory(memory: dict) -> None:
    for name, nbytes in memory["weight_bytes"].items():
        print(f"{'weights ' + name:>22}: {_gib(nbytes)} (layer-wise resident {_gib(memory['layerwise_bytes'][name])})")
    for name, fit in memory["fit"].items():
        verdict = "fits" if fit["fits"] else "does not fit"
        print(f"{name + ' (' + memory['dtype'] + ')':>22}: {verdict}: needs {_gib(fit['need_bytes'])}, "
              f"{_gib(fit['free_bytes'])} free on {fit['where']}")


def run(args) -> int:
    from ..describe import describe

    info = describe(args.model, **load_kwargs(args))
    if args.json:
        print_json(info)
        return 0
    for key, value in info.items():
        if key == "memory":
            _print_memory(value)
        elif value is not None:
            print(f"{key:>22}: {value}")
    return 0

"""Arguments shared by several subcommands, and JSON printing."""
from __future__ import annotations

import json
import sys

WHOLE_ONLY = ("auto", "whole")  # commands that need the whole model in memory (eval, sweep)
ALL_PIPELINES = ("auto", "whole", "layerwise")


def add_model_argument(parser, default: str = "default") -> None:
    parser.add_argument("--model", default=default,
                        help="'default' (embedded SmolLM2-135M-Instruct), a local folder, or a Hub id")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom modeling code from the model folder (off by default)")


def add_device_arguments(parser, pipelines: tuple[str, ...] = ALL_PIPELINES) -> None:
    """--device, --dtype, --max-memory, --offload-folder and --pipeline (see `load_kwargs`)."""
    from ..devices import DTYPE_CHOICES

    group = parser.add_argument_group("device and memory")
    group.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                       help="where to compute (default auto: CUDA when available)")
    group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                       help="weights' dtype (default auto: bfloat16 on a GPU that supports it, else float32)")
    group.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                       help="let accelerate spread the model within these budgets, e.g. cpu=8GiB,cuda:0=20GiB")
    group.add_argument("--offload-folder", default=None, metavar="DIR",
                       help="where accelerate may offload weights that fit nowhere else (disk)")
    layerwise = "layerwise" in pipelines
    group.add_argument("--pipeline", default="auto", choices=pipelines,
                       help="whole: the model in memory" + ("; layerwise: one decoder layer at a time" if layerwise
                                                            else "") + "; auto (default): "
                       + ("whole when it fits, else layerwise" if layerwise else "whole, if it fits"))
    parser.set_defaults(_pipelines=pipelines)


def load_kwargs(args) -> dict:
    """load_model keyword arguments from the parsed arguments ("auto" is "whole" where layer-wise is not offered)."""
    pipeline = getattr(args, "pipeline", "auto")
    if pipeline == "auto" and "layerwise" not in getattr(args, "_pipelines", ALL_PIPELINES):
        pipeline = "whole"
    return {"dtype": getattr(args, "dtype", "auto"), "device": getattr(args, "device", "auto"),
            "max_memory": getattr(args, "max_memory", None), "offload_folder": getattr(args, "offload_folder", None),
            "pipeline": pipeline, "trust_remote_code": getattr(args, "trust_remote_code", False)}


def score_kwargs(loaded) -> dict:
    """score()'s placement for a LoadedModel: layer-wise from its weight source onto its device in its dtype,
    or whole, where the model already is (docs/CONTRACTS.md, "Scale")."""
    if loaded.pipeline == "layerwise":
        return {"pipeline": "layerwise", "weight_source": loaded.weights, "device": loaded.device,
                "dtype": loaded.dtype}
    return {"pipeline": "whole"}


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")

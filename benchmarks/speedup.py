"""Measured speed-up of physically pruned models over the dense default model, on a quiet machine.

    .venv/bin/python benchmarks/speedup.py [--ratios 0.2,0.5] [--threads N]

Speed depends only on the pruned shapes, and with the uniform allocation every scoring method
gives the same shapes (attention: whole KV groups; MLP: the same channel count per layer), so the
instant magnitude scores are used to make the plans. Prints params, MACs per token and measured
prefill / decode throughput (median of repeats, batch 1 and 8) as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.loading import load_model  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.speed import compare, measure_speed  # noqa: E402
from bip_core.surgery import prune_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default")
    scores = score(loaded.model, loaded.tokenizer, "magnitude")

    def measure(model):
        return measure_speed(model, loaded.tokenizer, batch_sizes=(1, 8), prompt_len=128, new_tokens=32,
                             repeats=args.repeats)

    dense = measure(loaded.model)
    for ratio in (float(r) for r in args.ratios.split(",")):
        pruned = prune_model(loaded.model, make_plan(scores, loaded.model, ratio, "uniform"))
        result = compare(dense, measure(pruned))
        print(json.dumps({"ratio": ratio, "allocation": "uniform", "threads": torch.get_num_threads(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

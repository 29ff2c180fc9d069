"""Where the plans of LLM-BIP and FLAP differ: attention units and MLP channels kept per layer.

    .venv/bin/python benchmarks/plan_shapes.py [--ratios 0.2,0.5] [--threads 1]

Scores the default model once per configuration (wiki-bb train, 64 x 128 tokens, seed 0, as the
benchmark does), makes each configuration's global plan at every ratio, and prints how many of the
90 KV groups it keeps, the per-layer KV groups kept (one digit per layer), and the MLP channels
kept in total and in the most-pruned layer. It explains the ablation results in the README: the
(1 + L) bound keeps every attention unit at 0.2 and cuts the middle MLPs much deeper instead; the
measured gain keeps layer 0's attention, which L = 0 gives up.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.architecture import model_geometry  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scoring import score  # noqa: E402

# (label, method, options, allocation): each method under the global allocation the README benchmarks it with
CONFIGS = [
    ("LLM-BIP default (gain)", "bip", {}, "global-energy"),
    ("LLM-BIP, L = 0", "bip", {"lipschitz": "zero"}, "global-energy"),
    ("LLM-BIP, (1 + L) bound", "bip", {"lipschitz": "measured"}, "global-energy"),
    ("FLAP", "flap", {}, "global-std"),
    ("FLAP", "flap", {}, "global-energy"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default")
    geometry = model_geometry(loaded.model)
    units = sum(g.num_key_value_heads for g in geometry)
    channels = sum(g.intermediate_size for g in geometry)
    cache = {}
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for label, method, options, allocation in CONFIGS:
            key = (method, tuple(sorted(options.items())))
            if key not in cache:
                cache[key] = score(loaded.model, loaded.tokenizer, method, samples=64, seq_len=128, seed=0, **options)
            plan = make_plan(cache[key], loaded.model, ratio, allocation)
            attention = [len(layer["attention"]) for layer in plan.layers]
            mlp = [len(layer["mlp"]) for layer in plan.layers]
            low = min(range(len(mlp)), key=mlp.__getitem__)
            print(f"r={ratio} {label:24s} {allocation:13s} KV groups kept {sum(attention):3d}/{units} "
                  f"[{''.join(map(str, attention))}]  MLP channels kept {sum(mlp)}/{channels}, "
                  f"fewest {mlp[low]} (layer {low})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Baselines at full strength (issue 12): Wanda-sp and LLM-Pruner Taylor under their own rules, against
LLM-BIP at the same removed fraction.

    python benchmarks/fair_baselines.py [--windows 256] [--ratios 0.2,0.5] [--out results/fair_baselines.csv]

For each baseline and asked ratio r, on the default model (calibration 64 x 128 wiki-bb train tokens,
seed 0; perplexity on wiki-bb TEST, 128-token windows):
  (a) `paper`: its own published rule as the original code runs it: int(r * units) attention units and
      int(r * channels) channels per layer (LLM-Pruner only in its layer range), Wanda-sp sequential
      (each layer chosen on the outputs of the already-pruned layers), neither with bias compensation.
      These rules remove less than r: the row says how much.
  (b) `paper-scaled`: the same rule with its per-layer ratio raised until it removes r.
  (c) LLM-BIP (default scores, global-energy, bias compensation) at exactly the fraction each row removed,
so every comparison is at an equal removed fraction of attention+MLP parameters.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bip_core.loading import load_model  # noqa: E402
from bip_core.perplexity import perplexity  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.sequential import calibrate_and_compress  # noqa: E402
from bip_core.surgery import prune_model  # noqa: E402

CALIBRATION = dict(source="wiki-bb", samples=64, seq_len=128, seed=0)
SEQUENTIAL = {"wanda-sp": True, "taylor": False}  # as the original code runs each


def baseline_model(model, tokenizer, scores, method: str, ratio: float, allocation: str):
    plan = make_plan(scores, model, ratio, allocation)
    if SEQUENTIAL[method]:
        plan = calibrate_and_compress(model, tokenizer, plan, sequential=True, compensation="none",
                                      **CALIBRATION).plan
    return plan, prune_model(model, plan)


def bip_model(model, scores, fraction: float):
    plan = make_plan(scores, model, fraction, "global-energy")
    return plan, prune_model(model, plan, bias_compensation=True, scores=scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--methods", default="wanda-sp,taylor")
    parser.add_argument("--out", default=str(ROOT / "results" / "fair_baselines.csv"))
    args = parser.parse_args()
    loaded = load_model("default")
    model, tokenizer = loaded.model, loaded.tokenizer
    bip_scores = score(model, tokenizer, "bip", **CALIBRATION)
    rows = []

    def measure(method, allocation, ratio, plan, pruned, sequential, compensation):
        started = time.perf_counter()
        ppl = perplexity(pruned, tokenizer, split="test", windows=args.windows)["ppl"]
        rows.append({"method": method, "allocation": allocation, "ratio_asked": ratio,
                     "removed_attention_mlp": round(plan.summary()["removed_attention_mlp"], 4),
                     "sequential": sequential, "compensation": compensation, "ppl": round(ppl, 2),
                     "windows": args.windows})
        print(rows[-1], f"{time.perf_counter() - started:.0f} s", flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)

    for method in args.methods.split(","):
        scores = score(model, tokenizer, method, **CALIBRATION)
        for ratio in map(float, args.ratios.split(",")):
            for allocation in ("paper", "paper-scaled"):
                plan, pruned = baseline_model(model, tokenizer, scores, method, ratio, allocation)
                measure(method, allocation, ratio, plan, pruned, SEQUENTIAL[method], "none")
                fraction = plan.summary()["removed_attention_mlp"]
                plan, pruned = bip_model(model, bip_scores, fraction)
                measure("bip", f"global-energy (= {method} {allocation})", ratio, plan, pruned, False, "bias")
    return 0


if __name__ == "__main__":
    sys.exit(main())

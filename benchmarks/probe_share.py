"""How much LLM-BIP's scores and plans move when its probes use fewer calibration tokens (issue 11, item 8).

    .venv/bin/python benchmarks/probe_share.py [--windows 64] [--shares 16,32,64] [--min-tokens 8]
    .venv/bin/python benchmarks/probe_share.py --perplexity --windows 16 --shares 16,64,128 --min-tokens 4 \
        --sampling random --seeds 0,1,2 [--compensation bias] [--out results/probe_share_ppl.csv]
    .venv/bin/python benchmarks/probe_share.py --perplexity --windows 64 --shares 16,64 --min-tokens 4 \
        --sampling random --out results/probe_share_ppl_64.csv      (64 x 128, global-energy)

--sampling: bip's probe_sampling (default: bip's default, stratified; the results/probe_share_*.csv files were
made with random tokens, before stratified probes became the default in 664a746).

Scores the default model (wiki-bb train, --windows x 128 tokens, seed 0) once per `probe_share` (calibration
tokens per probe MLP token-pass; with the default model's 3 units and L, each probe uses one token in 4 x share,
at least --min-tokens) and compares each with the first: the unit gains'
relative change (median and max), the Spearman correlation of the attention scores, and how many per-layer kept
counts (attention units + MLP channels) a global-energy plan changes at 0.2 and 0.5. CPU seconds of each
scoring run are printed too (noisy on a shared machine).

--perplexity: what the probes' noise does to a pruned model. For each calibration seed, a sweep
(bip_core.sweep, wiki-bb valid split, 64 windows of 128 tokens; global-energy at 0.2 and 0.5) of LLM-BIP at
each probe_share and of LLM-BIP with L = 0 (no gain probes at all: the largest change the probes can make),
pruned with --compensation (bias, one pass, by default: where the attention factor matters most; under
sequential refit even L = 0 prunes as well as the gains). The rows go to --out, and the mean perplexity
per variant and ratio over the seeds is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bip_core.scoring.bip as bip  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.sweep import sweep  # noqa: E402


def counts_changed(model, a, b, ratio: float) -> int:
    kept = [np.concatenate(make_plan(s, model, ratio, "global-energy").kept_counts()) for s in (a, b)]
    return int(np.abs(kept[0] - kept[1]).sum())


def compare(model, a, b) -> dict:
    gains = [np.concatenate([layer["unit_gain"] for layer in s.layers]) for s in (a, b)]
    attention = [np.concatenate([layer["attention"] for layer in s.layers]) for s in (a, b)]
    change = np.abs(gains[0] - gains[1]) / gains[0]
    return {"gain change median": f"{np.median(change):.1%}", "gain change max": f"{change.max():.0%}",
            "attention Spearman": round(float(spearmanr(*attention)[0]), 3),
            "kept counts changed at 0.2": counts_changed(model, a, b, 0.2),
            "kept counts changed at 0.5": counts_changed(model, a, b, 0.5)}


def perplexities(loaded, args) -> int:
    """The --perplexity sweeps: one per seed, every variant in it; rows written to args.out as they come."""
    import pandas as pd

    methods = [f"bip:probe_share={share}:probe_sampling={args.sampling}" for share in args.shares.split(",")]
    methods.append("bip:lipschitz=zero")
    tables = []
    for seed in (int(s) for s in args.seeds.split(",")):
        tables.append(sweep(loaded.model, loaded.tokenizer, methods, ratios=[0.2, 0.5], allocations=["global-energy"],
                            samples=args.windows, seed=seed, ppl_split="valid", windows=64,
                            compensation=args.compensation, sequential=False, dense=False))
        table = pd.concat(tables)
        table.assign(min_probe_tokens=args.min_tokens).to_csv(args.out, index=False)
        print(f"seed {seed} done", flush=True)
    means = table.groupby(["method", "ratio"])["ppl"].agg(["mean", "min", "max"]).round(2)
    print(f"\n{args.windows} x 128 calibration tokens, {args.compensation} compensation, at least "
          f"{args.min_tokens} probe tokens; perplexity (wiki-bb valid) over seeds {args.seeds}:\n{means}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--shares", default="16,32,64", help="probe_share values; the first is the reference")
    parser.add_argument("--min-tokens", type=int, default=bip.MIN_PROBE_TOKENS,
                        help="the fewest probe tokens (bip.MIN_PROBE_TOKENS)")
    parser.add_argument("--perplexity", action="store_true", help="prune and measure perplexity (see above)")
    parser.add_argument("--seeds", default="0,1,2", help="calibration seeds of --perplexity")
    parser.add_argument("--compensation", default="bias", choices=("bias", "refit", "none"))
    parser.add_argument("--sampling", default=bip.DEFAULTS["probe_sampling"], choices=tuple(bip.PROBE_SAMPLING),
                        help="how the gain probe's tokens are drawn (the results/probe_share_*.csv files: random)")
    parser.add_argument("--out", default="results/probe_share_ppl.csv")
    args = parser.parse_args()
    loaded = load_model("default")
    bip.MIN_PROBE_TOKENS = args.min_tokens
    if args.perplexity:
        return perplexities(loaded, args)
    runs = []
    for share in (int(s) for s in args.shares.split(",")):
        started = time.process_time()
        runs.append(score(loaded.model, loaded.tokenizer, "bip", samples=args.windows, seq_len=128, batch_size=8,
                          probe_share=share, probe_sampling=args.sampling))
        print(f"probe_share {share}: {time.process_time() - started:.1f} CPU s", flush=True)
        if len(runs) > 1:
            print(f"  against probe_share {args.shares.split(',')[0]}: {compare(loaded.model, runs[0], runs[-1])}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

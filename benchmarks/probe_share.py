"""How much LLM-BIP's scores and plans move when its probes use fewer calibration tokens (issue 11, item 8).

    .venv/bin/python benchmarks/probe_share.py [--windows 64] [--shares 16,32,64] [--min-tokens 8]

Scores the default model (wiki-bb train, --windows x 128 tokens, seed 0) once per `probe_share` (calibration
tokens per probe MLP token-pass; with the default model's 3 units and L, each probe uses one token in 4 x share,
at least --min-tokens) and compares each with the first: the unit gains'
relative change (median and max), the Spearman correlation of the attention scores, and how many per-layer kept
counts (attention units + MLP channels) a global-energy plan changes at 0.2 and 0.5. CPU seconds of each
scoring run are printed too (noisy on a shared machine).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--shares", default="16,32,64", help="probe_share values; the first is the reference")
    parser.add_argument("--min-tokens", type=int, default=bip.MIN_PROBE_TOKENS,
                        help="the fewest probe tokens (bip.MIN_PROBE_TOKENS)")
    args = parser.parse_args()
    loaded = load_model("default")
    bip.MIN_PROBE_TOKENS = args.min_tokens
    runs = []
    for share in (int(s) for s in args.shares.split(",")):
        started = time.process_time()
        runs.append(score(loaded.model, loaded.tokenizer, "bip", samples=args.windows, seq_len=128, batch_size=8,
                          probe_share=share))
        print(f"probe_share {share}: {time.process_time() - started:.1f} CPU s", flush=True)
        if len(runs) > 1:
            print(f"  against probe_share {args.shares.split(',')[0]}: {compare(loaded.model, runs[0], runs[-1])}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compensation ablations (issue 13), decided on the VALID split: none / bias / refit, dense and sequential.

    .venv/bin/python benchmarks/compensation.py --stage alpha    # refit's ridge for LLM-BIP (seed 0)
    .venv/bin/python benchmarks/compensation.py --stage ablate   # the full grid, three calibration seeds

Each (method, seed) is scored once on wiki-bb train (64 x 128 tokens), planned at each ratio with the
method's own allocation (LLM-BIP global-energy, FLAP global-std), then pruned with every
(compensation, sequential) setting and evaluated on the first --windows windows of wiki-bb VALID
(128 tokens each):

    none     the kept columns as they are
    bias     FLAP's mean of what the removed columns contributed, added to the bias
    refit    the kept columns of o_proj / down_proj refit by ridge least squares (bip_core.refit)
    dense       units and compensation from the dense model's calibration inputs
    sequential  each layer chosen and fitted on the outputs of the already-pruned layers before it

The alpha stage runs refit (dense and sequential) for LLM-BIP at several alphas (the ridge relative to
the kept inputs' mean variance). Rows are appended to the CSV as they are measured and a rerun skips
rows already there, so a long run can be resumed. --summary prints the seed means (and writes the
pivot next to the CSV).
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
from bip_core.sequential import REFIT_ALPHA, compress_like  # noqa: E402
from bip_core.surgery import prune_model  # noqa: E402

ALLOCATION = {"bip": "global-energy", "flap": "global-std"}  # each method's own
MODES = [("none", False), ("bias", False), ("refit", False), ("none", True), ("bias", True), ("refit", True)]
KEY = ["method", "seed", "ratio", "compensation", "sequential", "alpha"]


def measure(loaded, scores, method: str, seed: int, ratio: float, compensation: str, sequential: bool,
            alpha: float, windows: int, split: str = "valid", allocation: str | None = None) -> dict:
    """One pruned model's perplexity on wiki-bb `split` (valid: where settings are chosen), with what it took to
    make it; `allocation`: the method's own (ALLOCATION) unless given."""
    model, tokenizer = loaded.model, loaded.tokenizer
    started = time.perf_counter()
    allocation = allocation or ALLOCATION[method]
    plan = make_plan(scores, model, ratio, allocation=allocation)
    done = compress_like(model, tokenizer, plan, scores, sequential=sequential, compensation=compensation,
                         alpha=alpha)
    pruned = prune_model(model, done.plan, bias_compensation=compensation == "bias", scores=done.scores,
                         refit=done.refit)
    made = time.perf_counter() - started
    result = perplexity(pruned, tokenizer, split=split, windows=windows)
    return {"method": method, "allocation": allocation, "seed": seed, "ratio": ratio,
            "compensation": compensation, "sequential": sequential,
            "alpha": alpha if compensation == "refit" else float("nan"),
            "removed_attention_mlp": round(done.plan.summary()["removed_attention_mlp"], 4), "ppl": result["ppl"],
            "windows": windows, "prune_seconds": round(made, 1)}


def grid(args) -> list[tuple]:
    """(method, seed, ratio, compensation, sequential, alpha) to run, in order: seed 0 first."""
    ratios = [float(r) for r in args.ratios.split(",")]
    if args.stage == "alpha":
        alphas = [float(a) for a in args.alphas.split(",")]
        modes = [{"dense": False, "sequential": True}[m] for m in args.alpha_modes.split(",")]
        return [("bip", 0, r, "refit", s, a) for r in ratios for s in modes for a in alphas]
    alpha = args.alpha if args.alpha is not None else REFIT_ALPHA
    modes = MODES if args.modes is None else [(c, s == "sequential") for c, s in
                                              (m.split("/") for m in args.modes.split(","))]
    return [(m, seed, r, c, s, alpha if c == "refit" else float("nan"))
            for seed in map(int, args.seeds.split(",")) for m in args.methods.split(",")
            for r in ratios for c, s in modes]


def done_keys(out: Path) -> set:
    if not out.exists():
        return set()
    table = pd.read_csv(out)
    return {_key(row) for row in table[KEY].itertuples(index=False)}


def _key(row) -> tuple:
    method, seed, ratio, compensation, sequential, alpha = row
    return (method, int(seed), round(float(ratio), 4), compensation, bool(sequential),
            None if pd.isna(alpha) else round(float(alpha), 12))


def summary(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out)
    table["mode"] = table["compensation"] + table["sequential"].map({True: " sequential", False: " dense"})
    table["alpha"] = table["alpha"].fillna(0)
    pivot = table.pivot_table(index=["method", "mode", "alpha"], columns="ratio", values="ppl",
                              aggfunc=["mean", "std", "count"])
    pivot.round(2).to_csv(out.with_name(out.stem + "_pivot.csv"))
    return pivot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("alpha", "ablate"), default="ablate")
    parser.add_argument("--methods", default="bip,flap")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--alphas", default="1e-4,1e-3,1e-2,1e-1")
    parser.add_argument("--alpha-modes", default="dense,sequential", help="refit modes of the alpha stage")
    parser.add_argument("--modes", default=None,
                        help="ablate stage: comma-separated compensation/sequential pairs, e.g. bias/dense,refit/sequential "
                             "(default all six)")
    parser.add_argument("--alpha", type=float, default=None, help="refit's alpha in the ablate stage")
    parser.add_argument("--windows", type=int, default=64, help="wiki-bb valid windows of 128 tokens")
    parser.add_argument("--out", default=None, help="default results/compensation_<stage>.csv")
    parser.add_argument("--summary", action="store_true", help="only print the seed means of --out")
    args = parser.parse_args()
    out = Path(args.out or ROOT / "results" / f"compensation_{args.stage}.csv")
    if args.summary:
        print(summary(out).round(1).to_string())
        return 0
    loaded, seen, scored = load_model("default"), done_keys(out), {}
    for method, seed, ratio, compensation, sequential, alpha in grid(args):
        if _key((method, seed, ratio, compensation, sequential, alpha)) in seen:
            continue
        if (method, seed) not in scored:
            scored.clear()  # one method's scores at a time
            scored[method, seed] = score(loaded.model, loaded.tokenizer, method, source="wiki-bb", samples=64,
                                         seq_len=128, seed=seed)
        row = measure(loaded, scored[method, seed], method, seed, ratio, compensation, sequential, alpha,
                      args.windows)
        print(row, flush=True)
        previous = pd.read_csv(out) if out.exists() else None
        table = pd.DataFrame([row]) if previous is None else pd.concat([previous, pd.DataFrame([row])])
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    print(summary(out).round(1).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

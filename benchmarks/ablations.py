"""Ablations of LLM-BIP's open choices (METHOD.md section 2), decided on the VALID split.

    .venv/bin/python benchmarks/ablations.py [--windows 64] [--out results/ablations.csv]
    .venv/bin/python benchmarks/ablations.py --only "LABEL;LABEL" --keep-others   # rerun some rows of --out

Each variant is scored once on wiki-bb train (64 x 128 tokens, seed 0, unless it varies that),
pruned in one pass (not sequentially; bias compensation where the variant says "+comp") at
attention+MLP ratios 0.2 and 0.5, and evaluated on wiki-bb VALID (paper protocol, the
first --windows windows) so that the test split is never used to choose settings. The first
variant is the default configuration under every allocation; each other variant changes one
choice (see VARIANTS). Writes results/ablations.csv, results/ablations_pivot.csv and a chart.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.loading import load_model  # noqa: E402
from bip_core.sweep import sweep, write_chart  # noqa: E402

# (label, sweep method spec, bias compensation, allocations, calibration samples, calibration seed). The
# first row is the default configuration under every allocation; each other row changes one choice of
# it. The seed rows repeat the deciding comparisons (the attention factor: directional gain, L = 0, the
# (1 + L) bound; and FLAP) on other calibration windows, because single-seed gaps under ~15% are noise
# (METHOD.md section 7 point 6).
BASE_ALLOCATION = "global-energy"
ALL = ["uniform", "global", "global-energy", "global-std"]
FLAP_BEST = ["global-energy", "global-std"]
VARIANTS = [
    ("bip (default: std, directional gain, kv_group, +comp)", "bip", "on", ALL, 64, 0),
    ("bip L=0: direct change, no gain", "bip:lipschitz=zero", "on", [BASE_ALLOCATION, "global-std"], 64, 0),
    ("bip measured L: (1+L) bound", "bip:lipschitz=measured", "on", [BASE_ALLOCATION, "global-std"], 64, 0),
    ("bip without compensation", "bip", "off", [BASE_ALLOCATION], 64, 0),
    ("bip mean_abs (paper formula), measured L, no comp", "bip:aggregation=mean_abs:lipschitz=measured", "off",
     [BASE_ALLOCATION, "global-std"], 64, 0),
    ("bip mean_abs +comp", "bip:aggregation=mean_abs", "on", [BASE_ALLOCATION], 64, 0),
    ("bip rms +comp", "bip:aggregation=rms", "on", [BASE_ALLOCATION], 64, 0),
    ("bip query_slot units", "bip:unit=query_slot", "on", [BASE_ALLOCATION], 64, 0),
    ("bip 128 calibration samples", "bip", "on", [BASE_ALLOCATION], 128, 0),
    ("flap +comp", "flap", "on", ALL, 64, 0),
    ("bip default, seed 1", "bip", "on", [BASE_ALLOCATION], 64, 1),
    ("bip default, seed 2", "bip", "on", [BASE_ALLOCATION], 64, 2),
    ("bip L=0, seed 1", "bip:lipschitz=zero", "on", [BASE_ALLOCATION], 64, 1),
    ("bip L=0, seed 2", "bip:lipschitz=zero", "on", [BASE_ALLOCATION], 64, 2),
    ("bip measured L, seed 1", "bip:lipschitz=measured", "on", [BASE_ALLOCATION], 64, 1),
    ("bip measured L, seed 2", "bip:lipschitz=measured", "on", [BASE_ALLOCATION], 64, 2),
    ("flap +comp, seed 1", "flap", "on", FLAP_BEST, 64, 1),
    ("flap +comp, seed 2", "flap", "on", FLAP_BEST, 64, 2),
]


def in_variant_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered as VARIANTS (the dense row first; a rerun variant keeps its place in the tables)."""
    order = {"dense": -1, **{label: i for i, (label, *_rest) in enumerate(VARIANTS)}}
    return table.sort_values("method", key=lambda m: m.map(order).fillna(len(order)), kind="stable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--only", default=None, help="semicolon-separated variant labels to run (default all)")
    parser.add_argument("--out", default="results/ablations.csv")
    parser.add_argument("--keep-others", action="store_true",
                        help="with --only: keep --out's rows of the other variants (and its dense row), replace these")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default")
    ratios = [float(r) for r in args.ratios.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    only = args.only.split(";") if args.only else None
    tables = []
    if args.keep_others and only and out.exists():
        kept = pd.read_csv(out)
        tables.append(kept[~kept["method"].isin(only)])
    dense = not any((table["method"] == "dense").any() for table in tables)
    for label, spec, compensation, variant_allocations, samples, seed in VARIANTS:
        if only and label not in only:
            continue
        t0 = time.perf_counter()
        table = sweep(loaded.model, loaded.tokenizer, [spec], ratios, variant_allocations, samples=samples,
                      seed=seed, ppl_split="valid", windows=args.windows, compensation=compensation,
                      sequential=False, dense=dense,
                      model_name="SmolLM2-135M-Instruct")
        dense = False
        table.loc[table["method"] == spec, "method"] = label
        tables.append(table)
        full = in_variant_order(pd.concat(tables, ignore_index=True))
        full.to_csv(out, index=False)
        print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        print(table[["method", "allocation", "ratio", "ppl"]].to_string(index=False), flush=True)
    full = in_variant_order(pd.concat(tables, ignore_index=True))
    write_chart(full, out.with_suffix(".html"), "Ablations on wiki-bb valid")
    pivot = full[full["method"] != "dense"].pivot_table(index="method", columns=["ratio", "allocation"], values="ppl",
                                                        sort=False)
    print(pivot.round(1).to_string())
    pivot.round(1).to_csv(out.with_name(out.stem + "_pivot.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

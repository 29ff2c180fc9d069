"""Exploration (valid split): which per-block scale should the global-energy ranking divide by?

LLM-BIP's global ranking compares blocks by the *relative* change of their output, score / scale.
The recorded scale is mean_t ||y_t||. On the default model that mean jumps 2.3x at layer 11, where a
massive-activation channel appears on a few tokens, while the median token norm barely moves; so
the later blocks' changes look small and are pruned hardest. For each calibration seed this script
scores the default model (bip defaults, 64 x 128 wiki-bb train), measures every block's token norms
on the same windows, and evaluates global-energy plans (compensated as --modes says) on wiki-bb
VALID (64 windows) with robust scales in place of the mean: the median token norm,
1 / sqrt(mean_t 1 / ||y_t||^2) (the scale at which the next block's RMSNorm sees a change), the mean
over the tokens that are not outliers (||y_t|| at most bip.OUTLIER_FACTOR medians), and the geometric
mean of the mean and the median.

    .venv/bin/python benchmarks/explore_block_scale.py [--seeds 0,1,2] [--modes bias/dense,refit/sequential]
        [--scales "mean,median"] [--out results/block_scale.csv] [--threads 1]
        [--split test --windows 256]                                    # the test split, once chosen
        [--methods flap,wanda-sp,taylor --allocations global-energy,global --modes practice]   # the baselines

Each (method, allocation, seed, scale, ratio, mode) is one row of --out; rows already there are skipped, so
runs resume and several processes can fill different seeds into different files. --summary prints the
table in --out. The other methods are scored with their defaults, like LLM-BIP, and pruned with their own
practice (--modes practice: bip_core.practice), so that a scale that helps every global ranking is seen
to.
Result (README "The block scale of the global ranking", results/block_scale.csv): sqrt(mean x median) is better
than the mean at both ratios under refit + sequential (-12% at 0.5), and on the test split at 0.5
(results/block_scale_test.csv): the default since 2026-12-03 (bip_core.allocation BLOCK_SCALES, "mean-median").
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bip_core.architecture import decoder_layers  # noqa: E402
from bip_core.data import calibration_windows  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.practice import PRACTICE  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.scoring.bip import OUTLIER_FACTOR  # noqa: E402
from bip_core.sequential import REFIT_ALPHA  # noqa: E402
from compensation import measure  # noqa: E402


def token_norms(model, input_ids: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """||y_t|| of every block output, per block: [tokens] each."""
    layers = decoder_layers(model)
    norms: list[list[torch.Tensor]] = [[] for _ in layers]

    def tap(i):
        def hook(_module, _args, output):
            y = output[0] if isinstance(output, tuple) else output
            norms[i].append(torch.linalg.vector_norm(y.float(), dim=-1).flatten())
        return hook

    hooks = [layer.register_forward_hook(tap(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(input_ids), batch_size):
                model.model(input_ids=input_ids[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(n).double() for n in norms]


SCALES = {  # name -> a block's scale from its tokens' output norms ||y_t|| [tokens]
    "mean": lambda n: n.mean(),
    "median": lambda n: n.median(),
    "RMSNorm-weighted": lambda n: (1 / (1 / n ** 2).mean()).sqrt(),
    "mean without outliers": lambda n: n[n <= OUTLIER_FACTOR * n.median()].mean(),
    "sqrt(mean x median)": lambda n: (n.mean() * n.median()).sqrt(),
    "mean^(3/4) x median^(1/4)": lambda n: n.mean() ** 0.75 * n.median() ** 0.25,
    "mean^(1/4) x median^(3/4)": lambda n: n.mean() ** 0.25 * n.median() ** 0.75,
}
KEY = ["method", "allocation", "seed", "scale", "ratio", "compensation", "sequential"]


def with_scale(scores, norms: list[torch.Tensor], scale: str):
    """A copy of `scores` whose blocks' output_scale is SCALES[scale] of their token norms (the mean: the
    recorded one, accumulated in float32) and which records no output_median, so that plans divide by exactly
    that scale (block scale "mean")."""
    variant = copy.deepcopy(scores)
    for layer, n in zip(variant.layers, norms):
        layer.pop("output_median", None)
        if scale != "mean":
            layer["output_scale"] = SCALES[scale](n).item()
    return variant


def done_rows(out: Path) -> set[tuple]:
    if not out.exists():
        return set()
    table = pd.read_csv(out)
    return {(a, b, int(s), c, round(float(r), 4), m, bool(q)) for a, b, s, c, r, m, q in table[KEY].itertuples(index=False)}


def append(out: Path, row: dict) -> None:
    table = pd.DataFrame([row])
    if out.exists():
        table = pd.concat([pd.read_csv(out), table])
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)


def modes(method: str, args) -> list[tuple[str, bool]]:
    """(compensation, sequential) pairs of --modes; "practice": the method's own (bip_core.practice)."""
    return [PRACTICE.get(method, ("none", False)) if mode == "practice" else (mode.split("/")[0], mode.endswith("sequential"))
            for mode in args.modes.split(",")]


def run_seed(loaded, method: str, seed: int, args, out: Path) -> None:
    """Every (allocation, scale, ratio, mode) of one method and calibration seed that --out does not have yet."""
    model, tokenizer, done = loaded.model, loaded.tokenizer, done_rows(out)
    todo = [(allocation, scale, ratio, mode) for allocation in args.allocations.split(",")
            for scale in args.scales.split(",") for ratio in (0.2, 0.5) for mode in modes(method, args)
            if (method, allocation, seed, scale, ratio, *mode) not in done]
    if not todo:
        return
    scores = score(model, tokenizer, method, samples=64, seq_len=128, seed=seed)
    norms = token_norms(model, calibration_windows(tokenizer, "wiki-bb", 64, 128, seed))
    for allocation, scale, ratio, (compensation, sequential) in todo:
        row = measure(loaded, with_scale(scores, norms, scale), method, seed, ratio, compensation, sequential,
                      REFIT_ALPHA, args.windows, args.split, allocation)
        row = {"seed": seed, "scale": scale, "split": args.split, **{k: v for k, v in row.items() if k != "seed"}}
        print(row, flush=True)
        append(out, row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--windows", type=int, default=64, help="evaluation windows (256: the paper's test protocol)")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="wiki-bb split to evaluate on (valid: where settings are chosen; test: a check once chosen)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="bip", help="scoring methods, e.g. bip,flap,wanda-sp,taylor")
    parser.add_argument("--allocations", default="global-energy", help="global rankings to plan with, e.g. global-energy,global")
    parser.add_argument("--scales", default=",".join(SCALES))
    parser.add_argument("--modes", default="bias/dense",
                        help="compensation/sequential pairs, e.g. bias/dense,refit/sequential; practice: each method's own")
    parser.add_argument("--out", default=str(ROOT / "results" / "block_scale.csv"))
    parser.add_argument("--summary", action="store_true", help="only print the seed means of --out")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.summary:
        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model("default")
        for method in args.methods.split(","):
            for seed in map(int, args.seeds.split(",")):
                run_seed(loaded, method, seed, args, out)
    table = pd.read_csv(out)
    print(table.pivot_table(index=["method", "allocation", "compensation", "sequential", "scale"],
                            columns=["ratio", "seed"], values="ppl").round(1).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's results: every method on the default model, offline data, ratios 0.2 and 0.5.

    make bench            (= .venv/bin/python benchmarks/run_benchmark.py --update-readme)

For each method (LLM-BIP in its default configuration, FLAP, Wanda-sp, LLM-Pruner Taylor,
magnitude L2, random) the model is scored once on wiki-bb train (64 x 128 tokens, seed 0), then
for each allocation (uniform, global) and attention+MLP ratio (0.2, 0.5) it is pruned
physically and measured:
  - perplexity on wiki-bb TEST, paper protocol (128-token windows; 256 windows by default),
  - offline zero-shot accuracy (lm-eval, BIG-bench tasks, the first N questions of each),
  - parameters left, scoring time and peak memory, prefill/decode speed-up over the dense model.
Writes results/benchmark.csv (one row per method, allocation and ratio, plus the dense row),
results/benchmark.html (PPL vs ratio) and, with --update-readme, the table in README.md.
Settings are chosen on the valid split (benchmarks/ablations.py), never on this test split.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bip_core.loading import load_model  # noqa: E402
from bip_core.speed import compare, measure_speed  # noqa: E402
from bip_core.sweep import sweep, write_chart  # noqa: E402
from bip_core.zeroshot import zeroshot  # noqa: E402

METHODS = ["bip", "flap", "wanda-sp", "taylor", "magnitude", "random"]
# "global" means each method's own cross-layer ranking: LLM-BIP ranks block-output energies
# (global-energy), FLAP standardises per layer as its paper does (global-std); the others rank
# score / block output scale / parameters (global). FLAP also runs with global-energy, its best
# allocation at 0.5 on the valid split, so that it is not handicapped by its own ranking.
GLOBAL_OF = {"bip": "global-energy", "flap": "global-std"}
EXTRA_ALLOCATIONS = {"flap": ["global-energy"]}
# the offline tasks on which the dense model is clearly above chance (see `python -m bip_core eval --tasks offline-all`)
ZS_TASKS = ["bb_social_iqa", "bb_goal_step_wikihow_goal", "bb_goal_step_wikihow_step"]
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


class Extras:
    """Zero-shot accuracy and speed of every evaluated model (dense first), for the sweep's rows."""

    def __init__(self, dense_model, tokenizer, tasks, limit, speed: bool):
        self.dense_model, self.tokenizer, self.tasks, self.limit, self.speed = dense_model, tokenizer, tasks, limit, speed
        self.dense_speed = None

    def measure(self, model) -> dict:
        return measure_speed(model, self.tokenizer, batch_sizes=(1, 8), prompt_len=128, new_tokens=16, repeats=3)

    def __call__(self, model) -> dict:
        row = {}
        if self.tasks:
            zs = zeroshot(model, self.tokenizer, self.tasks, limit=self.limit)
            row["zeroshot_avg"] = zs["average"]
            row.update({f"zs_{name}": entry["value"] for name, entry in zs["tasks"].items()})
        if self.speed:
            if self.dense_speed is None:  # the dense model is measured in the same process, first
                self.dense_speed = self.measure(self.dense_model)
            measured = self.dense_speed if model is self.dense_model else self.measure(model)
            ratios = compare(self.dense_speed, measured)
            row["macs_ratio"] = ratios["macs_ratio"]
            for s in ratios["speedups"]:
                row[f"prefill_speedup_b{s['batch_size']}"] = s["prefill_speedup"]
                row[f"decode_speedup_b{s['batch_size']}"] = s["decode_speedup"]
        return row


def markdown_table(table: pd.DataFrame) -> str:
    cols = {"method": "method", "allocation": "allocation", "ratio": "ratio", "ppl": "PPL (wiki-bb test)",
            "zeroshot_avg": "zero-shot avg", "params": "params", "macs_ratio": "MACs/token vs dense"}
    # Measured speed-ups, scoring time and peak memory are in the CSV; they depend on what else the machine
    # runs, so the README quotes benchmarks/score_cost.py and benchmarks/speedup.py (fresh processes) instead.
    shown = table[[c for c in cols if c in table.columns]].copy()
    fmt = {"ppl": "{:.2f}", "zeroshot_avg": "{:.3f}", "score_seconds": "{:.1f}", "ratio": "{:.1f}",
           "macs_ratio": "{:.3f}"}
    lines = ["| " + " | ".join(cols[c] for c in shown.columns) + " |",
             "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        cells = []
        for c in shown.columns:
            v = row[c]
            if pd.isna(v):
                cells.append("-")
            elif c == "params":
                cells.append(f"{int(v) / 1e6:.1f}M")
            elif c == "score_peak_memory_bytes":
                cells.append(f"{v / 2**30:.2f} GiB")
            else:
                cells.append(fmt.get(c, "{}").format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(table: pd.DataFrame, command: str, settings: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text:
        raise SystemExit(f"README.md has no {README_START} marker")
    body = (f"{README_START}\nMade on {datetime.date.today().isoformat()} by `{command}` ({settings}).\n\n"
            f"{markdown_table(table)}\n{README_END}")
    head, rest = text.split(README_START, 1)
    readme.write_text(head + body + rest.split(README_END, 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--allocations", default="uniform,global")
    parser.add_argument("--windows", type=int, default=256, help="wiki-bb test windows of 128 tokens")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows of 128 tokens")
    parser.add_argument("--zeroshot-limit", type=int, default=100, help="questions per task (0: skip zero-shot)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--out", default="results/benchmark.csv")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense row (when running in parts)")
    parser.add_argument("--combine", default=None,
                        help="comma-separated CSVs of parts run separately: concatenate them into --out (no runs)")
    parser.add_argument("--settings", default=None, help="with --combine: the settings line for the README")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.combine:
        table = pd.concat([pd.read_csv(ROOT / p) for p in args.combine.split(",")], ignore_index=True)
        out = ROOT / args.out
        table.to_csv(out, index=False)
        write_chart(table, out.with_suffix(".html"), "SmolLM2-135M-Instruct: wiki-bb test perplexity vs ratio")
        print(markdown_table(table))
        if args.update_readme:
            update_readme(table, "make bench", args.settings or "")
        return 0
    loaded = load_model("default")
    extras = Extras(loaded.model, loaded.tokenizer, ZS_TASKS if args.zeroshot_limit else [], args.zeroshot_limit or None,
                    not args.no_speed)
    tables, dense = [], not args.no_dense
    out = ROOT / args.out
    for method in args.methods.split(","):
        name = method.split(":")[0]
        allocations = [GLOBAL_OF.get(name, "global") if a == "global" else a for a in args.allocations.split(",")]
        allocations += [a for a in EXTRA_ALLOCATIONS.get(name, []) if a not in allocations]
        tables.append(sweep(loaded.model, loaded.tokenizer, [method], [float(r) for r in args.ratios.split(",")],
                            allocations, samples=args.samples, seq_len=128, seed=0, ppl_source="wiki-bb",
                            ppl_split="test", windows=args.windows, model_name="SmolLM2-135M-Instruct",
                            dense=dense, extra_metrics=extras,
                            progress=lambda i, n, d: print(f"[{i}/{n}] {d}", file=sys.stderr, flush=True)))
        dense = False
        table = pd.concat(tables, ignore_index=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    write_chart(table, out.with_suffix(".html"), "SmolLM2-135M-Instruct: wiki-bb test perplexity vs ratio")
    print(markdown_table(table))
    if args.update_readme:
        settings = (f"torch {torch.__version__}, {torch.get_num_threads()} threads; calibration {args.samples} x 128 "
                    f"wiki-bb train tokens, seed 0; PPL {args.windows} x 128 wiki-bb test tokens; zero-shot first "
                    f"{args.zeroshot_limit} questions of {', '.join(ZS_TASKS)}")
        update_readme(table, "make bench", settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

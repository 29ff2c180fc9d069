"""The README's results: every method on the default model, compared three ways (issue 12).

    make bench            (= .venv/bin/python benchmarks/run_benchmark.py --update-readme)

Every method (LLM-BIP, FLAP, Wanda-sp, LLM-Pruner Taylor, magnitude L2, random) is scored once on
wiki-bb train (64 x 128 tokens, seed 0), then pruned physically at the asked attention+MLP ratios
(0.2, 0.5) and its perplexity measured on wiki-bb TEST (paper protocol, 256 windows of 128 tokens):

  (a) own rule: its own published allocation (`paper`) as its original code runs it, with the
      fraction it really removes (own rules often remove less than asked). Wanda-sp sequential and
      without compensation (FLAP's `prune_wanda_sp`: bias=False, each layer chosen on the outputs of
      the pruned layers before it); FLAP global-std with its bias compensation; LLM-Pruner's Taylor,
      magnitude and random in its layer range, one pass, no compensation; LLM-BIP global-energy with
      its default compensation (BIP_COMPENSATION, BIP_SEQUENTIAL below, or the flags).
  (b) best allocation at the exact ratio: each method (with its own compensation and sequential
      practice) under every candidate allocation (CANDIDATES: uniform, its own rule scaled to the
      budget, its own global ranking (GLOBAL_OF), global-energy, global-std, MLP-only; global and
      global-energy under both block scales, sqrt(mean x median) and the mean: SCALED), each measured
      on wiki-bb VALID (--valid-windows windows); the best there among those that remove at least the
      asked ratio (less UNDERSHOOT) is then evaluated on test. Candidates whose plan keeps the same
      counts as an earlier one are not measured twice. Every candidate's valid PPL is written to
      <out>_allocation_choice.csv.
  (c) LLM-BIP, with the allocation it chose on valid at that asked ratio, at exactly the fraction each
      other method's (a) row removed (and each (b) row whose rule could not hit the asked ratio, e.g.
      LLM-Pruner's scaled rule), so that every comparison is at an equal removed fraction. Those rows
      come from this run and from --compare-with (part CSVs of an earlier run).
Zero-shot accuracy (lm-eval, BIG-bench tasks, the first N questions of each) and speed (the MACs ratio
and prefill/decode speed-ups over the dense model) are measured for the (b) rows and the dense row only.

In parts (each one process with --threads 1; the baselines in two processes side by side, LLM-BIP
after them, since its (c) rows need their (a) rows):
    run_benchmark.py --methods flap,wanda-sp --out results/benchmark_baselines.csv
    run_benchmark.py --methods taylor,magnitude,random --no-dense --out results/benchmark_pruner.csv
    run_benchmark.py --methods bip --no-dense --compare-with results/benchmark_baselines.csv,results/benchmark_pruner.csv \\
                     --out results/benchmark_bip.csv
    run_benchmark.py --combine results/benchmark_baselines.csv,results/benchmark_pruner.csv,results/benchmark_bip.csv \\
                     --update-readme
--resume continues an interrupted part from the rows already in its --out files.
--combine concatenates the parts (and their _allocation_choice.csv files) into --out, writes the chart
(results/benchmark.html, PPL vs removed fraction) and, with --update-readme, the table in README.md.
Settings are chosen on the valid split, never on this test split.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bip_core.errors import PlanError  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.practice import PRACTICE  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.sequential import REFIT_ALPHA  # noqa: E402
from bip_core.speed import compare, measure_speed  # noqa: E402
from bip_core.sweep import INTEGER_COLUMNS, _dense_row, _prune_and_evaluate, _Run  # noqa: E402
from bip_core.zeroshot import zeroshot  # noqa: E402

METHODS = ["bip", "flap", "wanda-sp", "taylor", "magnitude", "random"]
MODEL_NAME = "SmolLM2-135M-Instruct"
CALIBRATION = dict(source="wiki-bb", samples=64, seq_len=128, seed=0)

# LLM-BIP's default practice; the flags --bip-compensation and --(no-)bip-sequential override it.
BIP_COMPENSATION, BIP_SEQUENTIAL = PRACTICE["bip"]  # refit, sequential: chosen on valid (benchmarks/compensation.py)
# The baselines as their authors' code runs them (bip_core.practice.PRACTICE): FLAP compensates with the mean
# (compress(..., bias=True)); Wanda-sp (FLAP's prune_wanda_sp) prunes layer by layer with bias=False; LLM-Pruner
# (taylor, and its magnitude and random baselines) prunes in one pass and compensates nothing.

# "global" is each method's own cross-layer ranking: LLM-BIP ranks block-output energies (global-energy),
# FLAP standardises per layer as its paper does (global-std); the others rank score / block output scale
# per parameter (global).
GLOBAL_OF = {"bip": "global-energy", "flap": "global-std"}
# own global before paper-scaled: for FLAP and LLM-BIP they are the same plan, which keeps the clearer name
CANDIDATES = ["uniform", "global", "paper-scaled", "global-energy", "global-std", "mlp-only"]
# the rankings that divide by a block scale (bip_core.allocation BLOCK_SCALES) are candidates under each: the
# default sqrt(mean x median) and the mean, so that a method whose ranking prefers the mean gets it (FLAP's
# global-energy does, at both ratios)
SCALED = ("global", "global-energy")
# (b) takes a candidate only when it removes at least the asked ratio less this (some rules cannot hit a ratio
# exactly: LLM-Pruner's scaled rule reaches 53.3% for 0.5); removing more only handicaps the method itself.
UNDERSHOOT = 0.005
VIEWS = {"a": "own rule", "b": "best allocation (chosen on valid)", "c": "LLM-BIP at (a)'s removed fraction"}
# the offline tasks on which the dense model is clearly above chance (see `python -m bip_core eval --tasks offline-all`)
ZS_TASKS = ["bb_social_iqa", "bb_goal_step_wikihow_goal", "bb_goal_step_wikihow_step"]
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
FRONT = ["view", "method", "allocation", "ratio", "removed_attention_mlp", "compensation", "sequential", "ppl",
         "zeroshot_avg", "macs_ratio", "ratio_group", "compared_with", "valid_ppl", "chosen_on"]


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


def practice(method: str, args) -> tuple[str, bool]:
    """(compensation, sequential) of `method`: LLM-BIP's from the flags, the baselines' their authors'."""
    if method == "bip":
        return args.bip_compensation, args.bip_sequential
    return PRACTICE.get(method, ("none", False))


def candidates(method: str) -> list[tuple[str, str | None]]:
    """The (allocation, block scale) pairs (b) chooses among, each method's `global` being its own ranking; the
    block scale is None for the allocations that use none."""
    names = dict.fromkeys(GLOBAL_OF.get(method, "global") if a == "global" else a for a in CANDIDATES)
    return [(a, scale) for a in names for scale in (("mean-median", "mean") if a in SCALED else (None,))]


def candidate(row: dict) -> tuple[str, str | None]:
    """A row's (allocation, block scale), the scale None where the allocation uses none."""
    return row["allocation"], row.get("block_scale") if row["allocation"] in SCALED else None


def label(allocation: str, block_scale) -> str:
    """The allocation's name, with its block scale when that is not the default."""
    return allocation if not isinstance(block_scale, str) or block_scale == "mean-median" else f"{allocation} ({block_scale} scale)"


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Known columns first, in FRONT's order; whole numbers stay whole where some rows lack them."""
    table = table[[c for c in FRONT if c in table.columns] + [c for c in table.columns if c not in FRONT]]
    whole = [c for c in INTEGER_COLUMNS + ["zeroshot_limit", "valid_windows", "threads"] if c in table.columns]
    return table.astype({c: "Int64" for c in whole})


class Benchmark:
    """One process's runs: a valid run for the allocation choice, test runs with and without extras."""

    def __init__(self, loaded, args):
        self.model, self.tokenizer, self.args = loaded.model, loaded.tokenizer, args
        test = {"source": "wiki-bb", "split": "test", "seq_len": 128, "windows": args.windows, "batch_size": 8}
        valid = {**test, "split": "valid", "windows": args.valid_windows}
        extras = Extras(self.model, self.tokenizer, ZS_TASKS if args.zeroshot_limit else [],
                        args.zeroshot_limit or None, not args.no_speed)
        self.valid = self._run(valid, None)
        self.test = self._run(test, None)
        self.test_extras = self._run(test, extras)
        self.rows: list[dict] = []     # the benchmark's rows (views a, b, c and dense)
        self.choices: list[dict] = []  # every valid candidate
        self.chosen_on = f"wiki-bb valid, {args.valid_windows} windows x 128"
        self.out = ROOT / args.out
        self.choice_out = choice_path(self.out)
        self.protocol = {"zeroshot_limit": args.zeroshot_limit, "valid_windows": args.valid_windows,
                         "threads": torch.get_num_threads(), "torch": torch.__version__}
        if args.resume:  # rows and valid candidates already measured by an interrupted run of this part
            self.rows, self.choices = records(self.out), records(self.choice_out)

    def done(self, choice: tuple[str, str | None] | None = None, **fields) -> dict | None:
        """The row of this run (or of the run it resumes) whose fields equal `fields` (and whose (allocation,
        block scale) is `choice`)."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in fields.items())
                     and (choice is None or candidate(r) == choice)), None)

    def _run(self, evaluation, extras) -> _Run:
        run = _Run(self.model, self.tokenizer, evaluation, None, extras, self.progress, 0)
        run.score_options = {}
        return run

    @staticmethod
    def progress(_i, _n, desc) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {desc}", file=sys.stderr, flush=True)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.rows:
            ordered(pd.DataFrame(self.rows)).to_csv(self.out, index=False)
        if self.choices:
            pd.DataFrame(self.choices).to_csv(self.choice_out, index=False)

    def common(self, method: str, scores) -> dict:
        compensation, sequential = practice(method, self.args)
        return {"method": method, "score_seconds": scores.meta.get("seconds"), "unit": scores.meta.get("unit"),
                "score_peak_memory_bytes": scores.meta.get("peak_memory_bytes"), "compensation": compensation,
                "bias_compensation": compensation == "bias", "sequential": sequential,
                "refit_alpha": REFIT_ALPHA if compensation == "refit" else None,
                "calibration_source": CALIBRATION["source"], "calibration_samples": self.args.samples,
                "calibration_seq_len": CALIBRATION["seq_len"], "seed": CALIBRATION["seed"]}

    def evaluate(self, run: _Run, scores, row: dict, **labels) -> dict:
        """Plan, (recalibrate,) prune and evaluate one row on `run`'s split; the row with `labels` added."""
        _prune_and_evaluate(run, scores, row)
        result = {**run.rows[-1], **labels}
        gc.collect()
        return result

    def add(self, row: dict) -> dict:
        self.rows.append({**row, **self.protocol})
        self.save()
        return row

    def dense(self) -> None:
        if self.done(view="dense") is not None:
            return
        _dense_row(self.test_extras)
        self.add({**self.test_extras.rows[-1], "view": "dense", "ratio_group": 0.0})
        _dense_row(self.valid)
        self.choices.append(choice_fields(self.valid.rows[-1]))
        self.save()

    def score(self, method: str):
        scores = score(self.model, self.tokenizer, method=method, source=CALIBRATION["source"],
                       samples=self.args.samples, seq_len=CALIBRATION["seq_len"], seed=CALIBRATION["seed"],
                       batch_size=8, model_name=MODEL_NAME)
        self.progress(0, 0, f"scored {method} in {scores.meta.get('seconds', 0):.0f} s")
        return scores

    def choose(self, method: str, scores, ratio: float) -> tuple[str, str | None]:
        """The candidate (allocation, block scale) with the lowest valid PPL at `ratio` among those that remove at
        least ratio - UNDERSHOOT (every candidate recorded, with its valid PPL)."""
        common, seen, eligible = self.common(method, scores), {}, {}
        measured = {candidate(c): c for c in self.choices  # by a resumed run
                    if c.get("method") == method and c.get("ratio") == ratio and not isinstance(c.get("same_plan_as"), str)
                    and c.get("ppl") is not None and np.isfinite(c["ppl"])}
        self.choices = [c for c in self.choices if not (c.get("method") == method and c.get("ratio") == ratio)]
        for allocation, block_scale in candidates(method):
            entry = {"method": method, "ratio": ratio, "allocation": allocation, "block_scale": block_scale}
            try:
                counts = make_plan(scores, self.model, ratio, allocation, block_scale=block_scale or "auto").kept_counts()
            except PlanError as err:
                self.choices.append({**entry, "error": str(err)})
                self.save()
                continue
            key = np.concatenate(counts).tobytes()
            if key in seen:  # the same counts give the same pruned model: not measured twice
                self.choices.append({**self.choices[seen[key]], "allocation": allocation, "block_scale": block_scale,
                                     "same_plan_as": label(*candidate(self.choices[seen[key]]))})
                self.save()
                continue
            row = measured.get((allocation, block_scale)) or self.evaluate(
                self.valid, scores, {**common, "allocation": allocation, "block_scale": block_scale, "ratio": ratio})
            seen[key] = len(self.choices)
            removed = row.get("removed_attention_mlp")
            ok = removed is not None and removed >= ratio - UNDERSHOOT
            self.choices.append({**choice_fields(row), "eligible": ok})
            if ok and row.get("ppl") is not None and np.isfinite(row["ppl"]):
                eligible[allocation, block_scale] = row["ppl"]
            self.save()
        if not eligible:
            raise SystemExit(f"{method} at {ratio}: no candidate allocation could be planned at that ratio")
        best = min(eligible, key=eligible.get)
        for entry in self.choices:
            if entry.get("method") == method and entry.get("ratio") == ratio:
                entry["chosen"] = candidate(entry) == best
        self.save()
        return best

    def own_rule(self, method: str, scores, ratio: float) -> dict:
        """(a): the method's `paper` allocation under its own practice, on test."""
        done = self.done(view="a", method=method, ratio=ratio)
        if done is not None:
            return done
        row = self.evaluate(self.test, scores, {**self.common(method, scores), "allocation": "paper", "ratio": ratio},
                            view="a", ratio_group=ratio)
        return self.add(row)

    def best_allocation(self, method: str, scores, ratio: float, choice: tuple[str, str | None]) -> dict:
        """(b): the (allocation, block scale) chosen on valid, at the asked ratio, on test with zero-shot and speed."""
        done = self.done(choice, view="b", method=method, ratio=ratio)
        if done is not None:
            return done
        valid_ppl = next(c.get("ppl") for c in self.choices
                         if c.get("method") == method and c.get("ratio") == ratio and candidate(c) == choice)
        allocation, block_scale = choice
        row = self.evaluate(self.test_extras, scores, {**self.common(method, scores), "allocation": allocation,
                                                       "block_scale": block_scale, "ratio": ratio},
                            view="b", ratio_group=ratio, valid_ppl=valid_ppl, chosen_on=self.chosen_on)
        return self.add(row)

    def at_fraction(self, scores, choice: tuple[str, str | None], other: dict) -> dict:
        """(c): LLM-BIP with its chosen (allocation, block scale) at exactly the fraction the row `other` removed, on
        test (rows that removed the same fraction share one evaluation)."""
        fraction = float(other["removed_attention_mlp"])
        labels = {"view": "c", "ratio_group": float(other["ratio"]), "chosen_on": self.chosen_on,
                  "compared_with": f"{other['method']} ({other['view']}) {other['allocation']} at {float(other['ratio']):g}"}
        same_row = self.done(choice, view="c", compared_with=labels["compared_with"])
        if same_row is not None:  # measured by the run this one resumes
            return same_row
        same_fraction = self.done(choice, view="c", ratio=fraction)
        if same_fraction is not None:
            return self.add({**same_fraction, **labels})
        allocation, block_scale = choice
        row = self.evaluate(self.test, scores, {**self.common("bip", scores), "allocation": allocation,
                                                "block_scale": block_scale, "ratio": fraction}, **labels)
        return self.add(row)


def choice_path(out: Path) -> Path:
    return out.with_name(out.stem + "_allocation_choice.csv")


def records(path: Path) -> list[dict]:
    """The rows of a CSV this script wrote (none when it does not exist), empty cells as None."""
    if not path.exists():
        return []
    table = pd.read_csv(path)
    return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
            for r in table.to_dict("records")]


def choice_fields(row: dict) -> dict:
    keys = ["method", "allocation", "block_scale", "ratio", "ppl", "removed_attention_mlp", "compensation", "sequential", "split",
            "windows", "tokens", "error"]
    return {k: row.get(k) for k in keys}


def run(args) -> pd.DataFrame:
    loaded = load_model("default")
    bench = Benchmark(loaded, args)
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose among {METHODS}")
    if not args.no_dense:
        bench.dense()
    bip_scores, bip_choice = None, {}
    for method in methods:
        scores = bench.score(method)
        for ratio in ratios:
            bench.own_rule(method, scores, ratio)
            choice = bench.choose(method, scores, ratio)
            bench.best_allocation(method, scores, ratio, choice)
            if method == "bip":
                bip_choice[ratio] = choice
        if method == "bip":
            bip_scores = scores
        del scores
        gc.collect()
    if bip_scores is not None:
        others = list(bench.rows)
        for part in filter(None, (args.compare_with or "").split(",")):
            others += pd.read_csv(ROOT / part).to_dict("records")
        for other in others:
            if other["method"] == "bip" or other.get("view") not in ("a", "b") or pd.isna(other.get("ppl")):
                continue
            fraction = float(other["removed_attention_mlp"])
            if other["view"] == "b" and abs(fraction - float(other["ratio"])) <= UNDERSHOOT:
                continue  # at the asked ratio: LLM-BIP's own (b) row is the comparison
            choice = bip_choice.get(float(other["ratio"]))
            if choice is None:
                print(f"no LLM-BIP choice at ratio {other['ratio']}; (c) for {other['method']} skipped", file=sys.stderr)
                continue
            bench.at_fraction(bip_scores, choice, other)
    return ordered(pd.DataFrame(bench.rows))


# ----------------------------------------------------------------------------------- reporting

def write_chart(table: pd.DataFrame, path: Path) -> None:
    """PPL vs removed fraction, one colour per method, one symbol per view; dense as a line."""
    import plotly.express as px

    pruned = table[(table["view"].isin(list(VIEWS))) & table["ppl"].notna()].copy()
    pruned["view"] = pruned["view"].map(lambda v: f"({v}) {VIEWS[v]}")
    fig = px.scatter(pruned.sort_values("removed_attention_mlp"), x="removed_attention_mlp", y="ppl", color="method",
                     symbol="view", log_y=True, hover_data=["allocation", "ratio", "compensation", "sequential"],
                     labels={"removed_attention_mlp": "fraction of attention+MLP parameters removed",
                             "ppl": "perplexity (wiki-bb test)"},
                     title=f"{MODEL_NAME}: wiki-bb test perplexity vs removed fraction")
    fig.update_traces(marker_size=10)
    dense = table[(table["view"] == "dense") & table["ppl"].notna()]
    if len(dense):
        fig.add_hline(y=float(dense["ppl"].iloc[0]), line_dash="dot", line_color="gray",
                      annotation_text=f"dense {float(dense['ppl'].iloc[0]):.2f}")
    fig.write_html(path, include_plotlyjs=True)  # embedded: the chart opens offline


def _allocation_cell(row) -> str:
    cell = label(*candidate(row))
    if row["view"] == "a":
        details = [c for c in (row.get("compensation") if row.get("compensation") not in (None, "none") else None,
                               "sequential" if row.get("sequential") in (True, "True") else None) if c]
    else:
        details = []
    if row["view"] == "c" and isinstance(row.get("compared_with"), str):
        details.append("= " + " ".join(row["compared_with"].split()[:2]))
    return cell + (f" ({', '.join(details)})" if details else "")


def markdown_table(table: pd.DataFrame) -> str:
    """view, method, allocation, asked ratio, removed %, PPL, zero-shot, MACs ratio; by ratio, then view."""
    view_order = {"dense": 0, "a": 1, "b": 2, "c": 3}
    method_order = {m: i for i, m in enumerate(METHODS)}
    shown = table.assign(_v=table["view"].map(view_order), _m=table["method"].map(method_order).fillna(-1))
    shown = shown.sort_values(["ratio_group", "_v", "_m", "removed_attention_mlp"], kind="stable")
    lines = ["| view | method | allocation | asked ratio | removed | PPL (wiki-bb test) | zero-shot avg | "
             "MACs/token vs dense |", "|---|---|---|---|---|---|---|---|"]
    for _, row in shown.iterrows():
        def num(col, fmt):
            v = row.get(col)
            return "-" if v is None or pd.isna(v) else fmt.format(v)
        ppl = "error" if pd.isna(row.get("ppl")) and isinstance(row.get("error"), str) else num("ppl", "{:.2f}")
        lines.append("| " + " | ".join([
            row["view"] if row["view"] == "dense" else f"({row['view']})", row["method"],
            "-" if row["view"] == "dense" else _allocation_cell(row), f"{round(float(row['ratio']), 3):g}",
            num("removed_attention_mlp", "{:.1%}"), ppl, num("zeroshot_avg", "{:.3f}"),
            num("macs_ratio", "{:.3f}")]) + " |")
    return "\n".join(lines)


def settings_line(table: pd.DataFrame, parts: int) -> str:
    def values(col):
        return sorted({str(v) for v in table[col].dropna()}) if col in table.columns else []
    threads, version = ", ".join(values("threads")) or "?", ", ".join(values("torch")) or "?"
    test_windows = ", ".join(values("windows")) or "?"
    limit = ", ".join(values("zeroshot_limit")) or "?"
    text = (f"torch {version}, {threads} thread(s) per process"
            f"{f', {parts} processes combined' if parts > 1 else ''}; calibration {', '.join(values('calibration_samples'))}"
            f" x 128 wiki-bb train tokens, seed 0; PPL {test_windows} x 128 wiki-bb test windows; (b) chosen on "
            f"{', '.join(values('valid_windows'))} x 128 wiki-bb valid windows (results/benchmark_allocation_choice.csv);"
            f" zero-shot ((b) and dense rows): first {limit} questions of {', '.join(ZS_TASKS)}")
    if len(values("windows")) > 1 or len(values("zeroshot_limit")) > 1 or len(values("valid_windows")) > 1:
        text += "; WARNING: the parts used different protocols"
    return text


def update_readme(table: pd.DataFrame, command: str, settings: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text:
        raise SystemExit(f"README.md has no {README_START} marker")
    legend = ("Views: (a) each method's own published rule as its original code runs it, at the fraction it "
              "really removes; (b) each method's best allocation at the asked ratio, chosen on the valid split; "
              "(c) LLM-BIP, with the allocation it chose on valid at that asked ratio, at exactly the fraction "
              "each other method's (a) row removed (and each (b) row that missed the asked ratio). Each method "
              "prunes as its authors' code does (FLAP: bias compensation; Wanda-sp: sequential; LLM-Pruner's "
              "Taylor, magnitude and random: one pass, no compensation), LLM-BIP with its default, sequential "
              "refit (bip_core/practice.py). The global rankings divide by sqrt(mean x median) of each block's "
              "output token norms unless a row says \"mean scale\" (both are candidates in (b)).")
    body = (f"{README_START}\nMade on {datetime.date.today().isoformat()} by `{command}` ({settings}).\n{legend}\n\n"
            f"{markdown_table(table)}\n{README_END}")
    head, rest = text.split(README_START, 1)
    readme.write_text(head + body + rest.split(README_END, 1)[1])


def combine(args) -> pd.DataFrame:
    parts = args.combine.split(",")
    table = ordered(pd.concat([pd.read_csv(ROOT / p) for p in parts], ignore_index=True))
    choices = [pd.read_csv(choice_path(ROOT / p)) for p in parts if choice_path(ROOT / p).exists()]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    if choices:
        pd.concat(choices, ignore_index=True).to_csv(choice_path(out), index=False)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--windows", type=int, default=256, help="wiki-bb test windows of 128 tokens")
    parser.add_argument("--valid-windows", type=int, default=64,
                        help="wiki-bb valid windows of 128 tokens on which (b) chooses the allocation")
    parser.add_argument("--samples", type=int, default=CALIBRATION["samples"], help="calibration windows of 128 tokens")
    parser.add_argument("--zeroshot-limit", type=int, default=50, help="questions per task (0: skip zero-shot)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--bip-compensation", choices=["none", "bias", "refit"], default=BIP_COMPENSATION,
                        help=f"LLM-BIP's compensation in (a), (b) and (c) (default {BIP_COMPENSATION})")
    parser.add_argument("--bip-sequential", action=argparse.BooleanOptionalAction, default=BIP_SEQUENTIAL,
                        help=f"LLM-BIP chooses each layer's units on the pruned earlier layers (default {BIP_SEQUENTIAL})")
    parser.add_argument("--compare-with", default=None,
                        help="comma-separated part CSVs whose (a) rows LLM-BIP is run against in (c)")
    parser.add_argument("--out", default="results/benchmark.csv")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense row (when running in parts)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows and valid candidates already in --out (and its _allocation_choice.csv) "
                             "and measure only what is missing (same settings as the interrupted run)")
    parser.add_argument("--combine", default=None,
                        help="comma-separated CSVs of parts run separately: concatenate them into --out (no runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = combine(args) if args.combine else run(args)
    write_chart(table, (ROOT / args.out).with_suffix(".html"))
    print(markdown_table(table))
    if args.update_readme:
        parts = len(args.combine.split(",")) if args.combine else 1
        update_readme(table, "make bench", settings_line(table, parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

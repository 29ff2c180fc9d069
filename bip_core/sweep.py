"""Sweep: score once per method, then plan, prune and measure perplexity at every ratio and allocation.

    table = sweep(model, tokenizer, methods=["bip", "flap"], ratios=[0.2, 0.5],
                  allocations=["uniform", "global"], out="results.csv")

A method may carry options, `name:key=value:key=value` (e.g. `bip:aggregation=rms`,
`bip:lipschitz=zero`); the whole string is its label in the table. Every (method, allocation,
ratio) row holds the perplexity with its protocol fields (dataset, split, seq_len, windows, tokens),
the parameters left, the removed fractions, the scoring time and peak memory, and the calibration
settings. The dense model is evaluated once as the row `method = "dense"`, ratio 0. A plan that
cannot be made (e.g. a ratio too high for the constraints) gives a row with `error` and no ppl.

compensation is none, bias (FLAP's mean), refit (ridge least squares of the kept o_proj/down_proj
columns, bip_core.refit) or auto. sequential chooses each layer's units on the outputs of the
already-pruned layers before it (bip_core.sequential). auto is the method's default practice
(bip_core.practice): LLM-BIP refit and sequential, FLAP bias, Wanda-sp sequential without compensation. Sequential and refit rows run one more
calibration pass per plan.

With `out`, the CSV is rewritten after every row (a long sweep keeps what it has measured) and a
plotly chart, PPL vs ratio per method and allocation on a log axis, is written next to it (.html).
"""
from __future__ import annotations

import gc
import math
import time
from pathlib import Path

import pandas as pd

from .errors import PlanError
from .options import parse_options
from .perplexity import paper_split, perplexity
from .practice import resolve_compensation, resolve_sequential
from .scores import is_centred, recommends_compensation  # noqa: F401  (is_centred: sweep's old name)

COLUMNS = ["method", "allocation", "block_scale", "ratio", "ppl", "nll", "params", "params_attention_mlp", "removed_attention_mlp",
           "removed_total", "score_seconds", "score_peak_memory_bytes", "prune_seconds", "eval_seconds",
           "bias_compensation", "compensation", "sequential", "refit_alpha", "unit", "dataset", "split", "seq_len", "windows", "tokens", "calibration_source",
           "calibration_samples", "calibration_seq_len", "seed", "error"]
INTEGER_COLUMNS = ["params", "params_attention_mlp", "score_peak_memory_bytes", "seq_len", "windows", "tokens",
                   "calibration_samples", "calibration_seq_len", "seed"]


def _table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table with the fixed column order (extra metrics after it); whole numbers stay whole
    where some rows lack them."""
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS + extra).astype({c: "Int64" for c in INTEGER_COLUMNS})


def parse_method(spec: str) -> tuple[str, dict]:
    """'bip:aggregation=rms:lipschitz=zero' -> ('bip', {'aggregation': 'rms', 'lipschitz': 'zero'})."""
    name, *items = [part.strip() for part in spec.split(":")]
    return name, parse_options(items, f"Method '{spec}'", "bip:aggregation=rms")


def write_chart(table: pd.DataFrame, path, title: str | None = None) -> Path:
    """PPL vs ratio, one line per method and allocation, log y; the dense model as a horizontal line."""
    import plotly.express as px

    path = Path(path)
    pruned = table[(table["method"] != "dense") & table["ppl"].notna()].copy()
    pruned["series"] = pruned["method"] + " / " + pruned["allocation"]
    fig = px.line(pruned.sort_values("ratio"), x="ratio", y="ppl", color="method", line_dash="allocation",
                  markers=True, log_y=True, hover_data=["series", "params", "removed_total", "score_seconds"],
                  labels={"ratio": "ratio (fraction of attention+MLP parameters removed)", "ppl": "perplexity"},
                  title=title)
    dense = table[(table["method"] == "dense") & table["ppl"].notna()]
    if len(dense):
        fig.add_hline(y=float(dense["ppl"].iloc[0]), line_dash="dot", line_color="gray",
                      annotation_text=f"dense {float(dense['ppl'].iloc[0]):.2f}")
    fig.write_html(path, include_plotlyjs=True)  # embedded: the chart opens offline
    return path


def _chart_title(row: dict, model_name: str) -> str:
    return (f"{model_name}: perplexity vs pruning ratio ({row['dataset']} {row['split']}, {row['windows']} windows x "
            f"{row['seq_len']} tokens, {row['tokens']} scored tokens)")


class _Run:
    """One sweep's evaluation settings, its rows so far and its progress."""

    def __init__(self, model, tokenizer, evaluation: dict, out, extra_metrics, progress, total: int):
        self.model, self.tokenizer, self.evaluation, self.out = model, tokenizer, evaluation, out
        self.extra_metrics, self.progress, self.total, self.step = extra_metrics, progress, total, 0
        self.rows: list[dict] = []

    def tick(self, desc: str) -> None:
        self.step += 1
        if self.progress is not None:
            self.progress(self.step, self.total, desc)

    def evaluate(self, model) -> tuple[dict, float]:
        t0 = time.perf_counter()
        result = perplexity(model, self.tokenizer, **self.evaluation)
        return {k: result[k] for k in ("ppl", "nll", "dataset", "split", "seq_len", "windows", "tokens")}, \
            time.perf_counter() - t0

    def record(self, row: dict, evaluated=None) -> None:
        extra = self.extra_metrics(evaluated) if self.extra_metrics is not None and evaluated is not None else {}
        self.rows.append({**{column: row.get(column) for column in COLUMNS}, **extra})
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            _table(self.rows).to_csv(self.out, index=False)


def _dense_row(run: _Run) -> None:
    from .architecture import count_params

    result, seconds = run.evaluate(run.model)
    params = count_params(run.model)
    run.record({"method": "dense", "allocation": "-", "ratio": 0.0, **result, "params": params["total"],
                "params_attention_mlp": params["attention_mlp"], "removed_attention_mlp": 0.0, "removed_total": 0.0,
                "eval_seconds": seconds, "bias_compensation": False, "compensation": "none",
                "sequential": False}, evaluated=run.model)
    run.tick("dense")


def _prune_and_evaluate(run: _Run, scores, row: dict) -> None:
    """One (allocation, ratio) row: plan, (recalibrate,) prune, evaluate, record (a plan error becomes the row's error)."""
    from .architecture import count_params
    from .plan import make_plan
    from .sequential import compress_like
    from .surgery import prune_model

    scale = row.get("block_scale")
    label = f"{row['method']} {row['allocation']}{f' ({scale} scale)' if scale else ''} {row['ratio']}"
    try:
        t0 = time.perf_counter()
        plan = make_plan(scores, run.model, row["ratio"], allocation=row["allocation"],
                         block_scale=row.get("block_scale") or "auto")
        row["block_scale"] = plan.meta["block_scale"]  # the one the global rankings divide by (auto resolved)
        with compress_like(run.model, run.tokenizer, plan, scores, sequential=row["sequential"],
                           compensation=row["compensation"], alpha=row["refit_alpha"], **run.score_options) as done:
            pruned = prune_model(run.model, done.plan, bias_compensation=row["compensation"] == "bias",
                                 scores=done.scores, refit=done.refit)
        row["prune_seconds"] = time.perf_counter() - t0
    except PlanError as err:
        run.record({**row, "error": str(err)})
        run.tick(f"{label}: {err}")
        return
    summary = done.plan.summary()
    result, seconds = run.evaluate(pruned)
    params = count_params(pruned)
    run.record({**row, **result, "params": params["total"], "params_attention_mlp": params["attention_mlp"],
                "removed_attention_mlp": summary["removed_attention_mlp"], "removed_total": summary["removed_total"],
                "eval_seconds": seconds}, evaluated=pruned)
    del pruned
    gc.collect()
    run.tick(f"{label}: ppl {result['ppl']:.2f}")


def sweep(model, tokenizer, methods, ratios, allocations=("uniform",), data: str = "wiki-bb", samples: int = 64,
          seq_len: int = 128, seed: int = 0, ppl_source: str = "wiki-bb", ppl_split: str | None = None,
          windows: int | None = None, ppl_seq_len: int = 128, batch_size: int = 8, compensation="auto",
          sequential="auto", refit_alpha: float | None = None, dense: bool = True, model_name: str | None = None,
          out=None, progress=None, extra_metrics=None, score_options: dict | None = None) -> pd.DataFrame:
    """Run the sweep (see module docstring) and return its table; with `out`, also write CSV + HTML chart.

    extra_metrics(model) -> dict, when given, is called on every evaluated model (the dense one first)
    and its entries become extra columns (e.g. zero-shot accuracy, speed-ups). score_options go to every
    `score()` call as they are (e.g. the placement of the layer-wise pipeline)."""
    from .scoring import score
    from .sequential import REFIT_ALPHA, compensation_record

    methods = [methods] if isinstance(methods, str) else list(methods)
    ratios = [float(r) for r in ratios]
    allocations = [allocations] if isinstance(allocations, str) else list(allocations)
    if "manual" in allocations:
        raise PlanError("The sweep cannot use the manual allocation (it needs per-layer ratios); use uniform, "
                        "global or global-std.")
    model_name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    evaluation = {"source": ppl_source, "split": ppl_split or paper_split(ppl_source), "seq_len": ppl_seq_len,
                  "windows": windows, "batch_size": batch_size}
    run = _Run(model, tokenizer, evaluation, Path(out) if out else None, extra_metrics, progress,
               len(methods) * (1 + len(ratios) * len(allocations)) + int(dense))
    run.score_options = dict(score_options or {})
    calibration = {"calibration_source": data, "calibration_samples": samples, "calibration_seq_len": seq_len,
                   "seed": seed}
    if dense:
        _dense_row(run)
    for spec in methods:
        method, options = parse_method(spec)
        scores = score(model, tokenizer, method=method, source=data, samples=samples, seq_len=seq_len, seed=seed,
                       batch_size=batch_size, model_name=model_name, **(score_options or {}), **options)
        run.tick(f"scored {spec}")
        chosen = resolve_compensation(compensation, scores)
        common = {"method": spec, "score_seconds": scores.meta.get("seconds"), "unit": scores.meta.get("unit"),
                  "score_peak_memory_bytes": scores.meta.get("peak_memory_bytes"),
                  **compensation_record(chosen, resolve_sequential(sequential, scores)),
                  "refit_alpha": (refit_alpha or REFIT_ALPHA) if chosen == "refit" else None, **calibration}
        for allocation in allocations:
            for ratio in ratios:
                _prune_and_evaluate(run, scores, {**common, "allocation": allocation, "ratio": ratio})
        del scores
    table = _table(run.rows)
    if out is not None:
        evaluated = next((r for r in run.rows if r["ppl"] is not None and not _isnan(r["ppl"])), None)
        write_chart(table, run.out.with_suffix(".html"),
                    _chart_title(evaluated, model_name) if evaluated else f"{model_name}: perplexity vs ratio")
    return table


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


__all__ = ["sweep", "write_chart", "parse_method", "resolve_compensation", "resolve_sequential", "COLUMNS"]

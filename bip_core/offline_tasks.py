"""Offline lm-eval tasks over the BIG-bench multiple-choice data (METHOD.md section 5, "Offline").

`prepare_tasks()` writes, under `$BIP_CACHE/tasks/bip_offline/`, one lm-eval 0.4.x YAML task and
one JSONL data file per task in `OFFLINE_TASKS`, all tagged `bip_offline`. Task names carry a
`bb_` prefix (`bb_social_iqa`, ...) so they never clash with lm-eval's own Hub tasks
(lm-eval's `social_iqa` is the full SIQA from the Hub).

Data: the `{question, choices, label}` rows of `bigbench_data.mc_dir()`, shuffled once with seed 0
so that a `limit` of N evaluates a representative sample (some BIG-bench files are ordered), then
written unchanged. Prompts are zero-shot: the question, then each choice as a continuation.

Metric: `acc` where the choices are fixed labels (correct/incorrect, Yes/No, True/False, ...),
`acc_norm` (log-likelihood per byte) where the choices are free text of different lengths, as
lm-eval does for hellaswag/arc_challenge/openbookqa. Both are computed and returned.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from .atomic import write_if_changed
from .bigbench_data import MC_TASKS, mc_dir, read_jsonl
from .paths import cache_dir

TAG = "bip_offline"
PREFIX = "bb_"
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class OfflineTask:
    source: str  # name in bigbench_data.MC_TASKS
    doc_to_text: str  # jinja template over {question, choices, label}
    metric: str  # primary metric: acc or acc_norm
    description: str

    @property
    def name(self) -> str:
        return PREFIX + self.source


OFFLINE_TASKS = {t.name: t for t in (
    OfflineTask("social_iqa", "Question: {{question}}\nAnswer:", "acc_norm",
                "Social IQa (BIG-bench): social situations, 3 free-text answers"),
    OfflineTask("winowhy", "{{question}}\nIs the reasoning above correct or incorrect?\nAnswer:", "acc",
                "WinoWhy: is a Winograd-schema explanation correct? (correct/incorrect)"),
    OfflineTask("strategyqa", "Question: {{question}}\nAnswer:", "acc",
                "StrategyQA: implicit multi-step yes/no questions"),
    OfflineTask("goal_step_wikihow_goal", "{{question}}", "acc_norm",
                "wikiHow goal inference: the goal a step serves (4 free-text answers)"),
    OfflineTask("goal_step_wikihow_step", "{{question}}", "acc_norm",
                "wikiHow step inference: a step towards a goal (4 free-text answers)"),
    OfflineTask("epistemic_reasoning",
                "{{question}}\nQuestion: Does the premise entail the hypothesis?\nAnswer:", "acc",
                "Epistemic reasoning: entailment between belief statements"),
    OfflineTask("navigate",
                "If you follow these instructions, do you return to the starting point? {{question}}\nAnswer:",
                "acc", "Navigate: do the steps return to the start? (True/False)"),
    OfflineTask("sports_understanding", "Is the following sentence plausible? \"{{question}}\"\nAnswer:", "acc",
                "Sports understanding: plausible or implausible sentence"),
)}
assert all(t.source in MC_TASKS for t in OFFLINE_TASKS.values())


def tasks_dir() -> Path:
    return cache_dir() / "tasks" / TAG


def task_data_path(name: str) -> Path:
    return tasks_dir() / f"{name}.jsonl"


def resolve_offline_name(name: str) -> str | None:
    """'social_iqa' or 'bb_social_iqa' -> 'bb_social_iqa'; None when it is no offline task."""
    if name in OFFLINE_TASKS:
        return name
    if PREFIX + name in OFFLINE_TASKS:
        return PREFIX + name
    return None


def task_yaml(task: OfflineTask, data_file: Path) -> dict:
    return {
        "tag": [TAG],
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": task.doc_to_text,
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, "primary_metric": task.metric, "source": f"bigbench==1.0.0 {MC_TASKS[task.source]}",
                     "shuffle_seed": SHUFFLE_SEED, "description": task.description},
    }


def prepare_tasks() -> dict:
    """Write the offline YAML tasks and their data into the cache. Idempotent: unchanged files are kept."""
    folder = tasks_dir()
    folder.mkdir(parents=True, exist_ok=True)
    counts, changed = {}, 0
    for task in OFFLINE_TASKS.values():
        rows = read_jsonl(mc_dir() / f"{task.source}.jsonl")
        random.Random(SHUFFLE_SEED).shuffle(rows)
        data_file = task_data_path(task.name)
        changed += write_if_changed(data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        changed += write_if_changed(folder / f"{task.name}.yaml",
                                     yaml.safe_dump(task_yaml(task, data_file), sort_keys=False, allow_unicode=True))
        counts[task.name] = len(rows)
    return {"status": "prepared" if changed else "cached", "dir": str(folder), "tag": TAG, "tasks": counts}


def offline_rows(name: str, limit: int | None = None) -> list[dict]:
    """The rows lm-eval evaluates for `name` with `limit` (the first N of the shuffled file)."""
    rows = read_jsonl(task_data_path(name))
    return rows if limit is None else rows[: int(limit)]


def chance_levels(rows: list[dict]) -> dict:
    """Random guessing (mean 1/choices) and the accuracy of always picking the most frequent label position."""
    if not rows:
        return {"chance": None, "majority": None}
    chance = sum(1 / len(r["choices"]) for r in rows) / len(rows)
    labels = [r["label"] for r in rows]
    majority = max(labels.count(label) for label in set(labels)) / len(rows)
    return {"chance": chance, "majority": majority}


def is_prepared() -> bool:
    return all((tasks_dir() / f"{n}.yaml").is_file() and task_data_path(n).is_file() for n in OFFLINE_TASKS)


__all__ = ["OFFLINE_TASKS", "TAG", "prepare_tasks", "tasks_dir", "resolve_offline_name", "offline_rows",
           "chance_levels", "is_prepared"]

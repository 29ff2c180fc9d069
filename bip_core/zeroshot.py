"""Zero-shot accuracy through lm-eval 0.4.x on the in-memory model (METHOD.md section 5).

`zeroshot(model, tokenizer, tasks)` wraps the model object with `HFLM(pretrained=model, ...)`
(never re-loading it from disk, so pruned models with per-layer shapes work as they are) and runs
`lm_eval.simple_evaluate` with 0 shots.

Tasks:
  standard   boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa (Hub data:
             checked with a fast-failing `require_hub` first); acc for boolq, piqa, winogrande,
             arc_easy and acc_norm for hellaswag, arc_challenge, openbookqa.
  offline    the local BIG-bench tasks of `offline_tasks` (bb_social_iqa, bb_winowhy, ...; plain
             names like "winowhy" are accepted), prepared by `python -m bip_core prepare`, run with
             the Hub switched off for `datasets` so nothing can hang on the network.
  any other lm-eval task name is passed through (it needs the Hub).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

from .errors import DataError
from .network import require_hub
from .offline_tasks import OFFLINE_TASKS, TAG, chance_levels, offline_rows, prepare_tasks, resolve_offline_name, \
    tasks_dir

STANDARD_TASKS = {  # task -> (primary metric, chance level)
    "boolq": ("acc", 0.5),
    "piqa": ("acc", 0.5),
    "hellaswag": ("acc_norm", 0.25),
    "winogrande": ("acc", 0.5),
    "arc_easy": ("acc", 0.25),
    "arc_challenge": ("acc_norm", 0.25),
    "openbookqa": ("acc_norm", 0.25),
}
OFFLINE_DEFAULT = ("bb_social_iqa", "bb_winowhy", "bb_strategyqa", "bb_goal_step_wikihow_goal",
                   "bb_goal_step_wikihow_step")


def resolve_tasks(tasks) -> list[str]:
    """Task names from a list or a comma-separated string; 'standard', 'offline' and 'offline-all' expand."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    names: list[str] = []
    for name in tasks or []:
        if not name:
            continue
        if name == "standard":
            expanded = list(STANDARD_TASKS)
        elif name == "offline":
            expanded = list(OFFLINE_DEFAULT)
        elif name in ("offline-all", TAG):
            expanded = list(OFFLINE_TASKS)
        else:
            expanded = [resolve_offline_name(name) or name]
        names += [n for n in expanded if n not in names]
    if not names:
        raise DataError("No zero-shot tasks given. Use 'offline', 'standard', or task names such as bb_winowhy.")
    return names


@contextlib.contextmanager
def _datasets_offline():
    """Keep `datasets` off the network while local JSON tasks load (restored afterwards)."""
    import datasets.config as dc

    saved_env = os.environ.get("HF_DATASETS_OFFLINE")
    saved = {k: getattr(dc, k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(dc, k)}
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for key in saved:
        setattr(dc, key, True)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(dc, key, value)
        if saved_env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = saved_env


@contextlib.contextmanager
def _quiet_lm_eval():
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _make_lm(model, tokenizer, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _task_entry(name: str, results: dict, n_samples: dict, limit: int | None) -> dict:
    metrics = results.get(name, {})
    offline = name in OFFLINE_TASKS
    if offline:
        metric = OFFLINE_TASKS[name].metric
        levels = chance_levels(offline_rows(name, limit))
    else:
        metric, chance = STANDARD_TASKS.get(name, ("acc", None))
        levels = {"chance": chance, "majority": None}
    value = metrics.get(f"{metric},none")
    stderr = metrics.get(f"{metric}_stderr,none")
    counts = n_samples.get(name, {})
    return {
        "metric": metric,
        "value": value,
        "stderr": stderr if isinstance(stderr, (int, float)) else None,
        "n": counts.get("effective"),
        "n_available": counts.get("original"),
        "chance": levels["chance"],
        "majority": levels["majority"],
        "acc": metrics.get("acc,none"),
        "acc_norm": metrics.get("acc_norm,none"),
        "offline": offline,
    }


def zeroshot(model, tokenizer, tasks="offline", limit: int | None = None, batch_size: int = 16,
             progress=None) -> dict:
    """Zero-shot accuracy of the in-memory `model` on `tasks` (see module docstring).

    Returns {"tasks": {name: {metric, value, stderr, n, n_available, chance, majority, acc,
    acc_norm, offline}}, "average" (mean primary value), "average_chance", "limit", "seconds",
    "num_fewshot", "lm_eval_version"}. `limit` caps the examples per task (the first N).
    """
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = resolve_tasks(tasks)
    online = [n for n in names if n not in OFFLINE_TASKS]
    if online:
        require_hub(f"The zero-shot task(s) {', '.join(online)}")
    if len(online) < len(names):
        prepare_tasks()  # idempotent; cheap when the cache is ready
    if progress is not None:
        progress(0, len(names), "zero-shot: " + ", ".join(names))
    t0 = time.perf_counter()
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=bool(online))
    offline_guard = _datasets_offline() if not online else contextlib.nullcontext()
    was_training = model.training
    with offline_guard, _quiet_lm_eval():
        try:
            out = simple_evaluate(model=_make_lm(model, tokenizer, batch_size), tasks=names, num_fewshot=0,
                                  limit=limit, task_manager=manager, log_samples=False, bootstrap_iters=1000,
                                  batch_size=batch_size)
        finally:
            model.train(was_training)
    seconds = time.perf_counter() - t0
    entries = {n: _task_entry(n, out["results"], out.get("n-samples", {}), limit) for n in names}
    values = [e["value"] for e in entries.values() if e["value"] is not None]
    chances = [e["chance"] for e in entries.values() if e["chance"] is not None]
    if progress is not None:
        progress(len(names), len(names), "zero-shot done")
    return {
        "tasks": entries,
        "average": sum(values) / len(values) if values else None,
        "average_chance": sum(chances) / len(chances) if chances else None,
        "limit": limit,
        "num_fewshot": 0,
        "seconds": round(seconds, 1),
        "lm_eval_version": getattr(lm_eval, "__version__", "?"),
    }


__all__ = ["zeroshot", "prepare_tasks", "resolve_tasks", "STANDARD_TASKS", "OFFLINE_DEFAULT", "OFFLINE_TASKS"]

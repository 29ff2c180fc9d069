"""Offline lm-eval tasks (preparation, discovery) and zero-shot runs on in-memory models."""
import json
import time

import pytest
import torch
import yaml

from bip_core.bigbench_data import mc_dir, read_jsonl
from bip_core.errors import OfflineError
from bip_core.loading import random_model
from bip_core.offline_tasks import OFFLINE_TASKS, TAG, chance_levels, offline_rows, prepare_tasks, tasks_dir
from bip_core.tiny_configs import tiny_config
from nonuniform import shrink_mlp
from bip_core.zeroshot import OFFLINE_DEFAULT, STANDARD_TASKS, resolve_tasks, zeroshot


@pytest.fixture(scope="module")
def prepared():
    return prepare_tasks()


def test_prepared_yaml_and_data_files_are_valid(prepared):
    assert set(prepared["tasks"]) == set(OFFLINE_TASKS)
    for required in ("bb_social_iqa", "bb_winowhy", "bb_strategyqa", "bb_goal_step_wikihow_goal",
                     "bb_goal_step_wikihow_step"):
        assert required in OFFLINE_TASKS
    for name, task in OFFLINE_TASKS.items():
        config = yaml.safe_load((tasks_dir() / f"{name}.yaml").read_text())
        assert config["task"] == name and TAG in config["tag"]
        assert config["output_type"] == "multiple_choice" and config["dataset_path"] == "json"
        assert {m["metric"] for m in config["metric_list"]} == {"acc", "acc_norm"}
        assert config["metadata"]["primary_metric"] == task.metric
        data_file = config["dataset_kwargs"]["data_files"]["test"]
        rows = [json.loads(line) for line in open(data_file)]
        assert len(rows) == prepared["tasks"][name] > 500
        assert all(isinstance(r["label"], int) and 0 <= r["label"] < len(r["choices"]) >= 2 for r in rows)
        source = read_jsonl(mc_dir() / f"{task.source}.jsonl")  # same examples, shuffled once
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(map(key, rows)) == sorted(map(key, source))


def test_prepare_tasks_is_idempotent(prepared):
    stamps = {p.name: p.stat().st_mtime_ns for p in tasks_dir().iterdir()}
    again = prepare_tasks()
    assert again["status"] == "cached" and again["tasks"] == prepared["tasks"]
    assert {p.name: p.stat().st_mtime_ns for p in tasks_dir().iterdir()} == stamps


def test_lm_eval_task_manager_finds_the_tasks_and_the_tag(prepared):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    assert set(OFFLINE_TASKS) | {TAG} <= set(manager.all_tasks)
    loaded = manager.load_task_or_group(["bb_strategyqa"])
    task = next(iter(loaded.values())) if isinstance(loaded, dict) else loaded
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc).startswith("Question: ") and task.doc_to_choice(doc) == ["Yes", "No"]


def test_resolve_tasks_names():
    assert resolve_tasks("offline") == list(OFFLINE_DEFAULT)
    assert resolve_tasks("winowhy, bb_strategyqa,winowhy") == ["bb_winowhy", "bb_strategyqa"]
    assert resolve_tasks(["standard"]) == list(STANDARD_TASKS)
    assert set(resolve_tasks("offline-all")) == set(OFFLINE_TASKS)
    assert resolve_tasks("boolq") == ["boolq"]


def test_chance_levels():
    rows = [{"choices": ["a", "b"], "label": 0}, {"choices": ["a", "b"], "label": 0},
            {"choices": ["a", "b", "c", "d"], "label": 1}]
    levels = chance_levels(rows)
    assert levels["chance"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert levels["majority"] == pytest.approx(2 / 3)


def test_standard_tasks_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_model(tiny_config("llama"))
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="boolq"):
        zeroshot(model, None, "boolq,bb_winowhy", limit=2)
    assert time.perf_counter() - t0 < 5


def _loglik(model, tokenizer, context: str, continuation: str) -> float:
    context_ids = tokenizer(context).input_ids
    whole = tokenizer(context + continuation).input_ids
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double()[0, :-1], dim=-1)
    return sum(logp[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


def _by_hand(model, tokenizer, name: str, limit: int) -> tuple[float, float]:
    """acc and acc_norm computed independently of lm-eval, with the task's prompt."""
    import jinja2

    template = jinja2.Template(OFFLINE_TASKS[name].doc_to_text)
    hits, hits_norm = 0, 0
    for row in offline_rows(name, limit):
        context = template.render(**row)
        scores = [_loglik(model, tokenizer, context, " " + c) for c in row["choices"]]
        norm = [s / len((" " + c).encode()) for s, c in zip(scores, row["choices"])]
        hits += max(range(len(scores)), key=scores.__getitem__) == row["label"]
        hits_norm += max(range(len(norm)), key=norm.__getitem__) == row["label"]
    return hits / limit, hits_norm / limit


def test_zeroshot_on_a_non_uniform_model_matches_a_hand_computation(tokenizer, prepared):
    model = shrink_mlp(random_model(tiny_config("llama"), seed=5), 0, 50)  # config no longer fits every layer
    limit = 8
    result = zeroshot(model, tokenizer, "strategyqa,goal_step_wikihow_step", limit=limit, batch_size=4)
    assert result["limit"] == limit and result["num_fewshot"] == 0
    for name in ("bb_strategyqa", "bb_goal_step_wikihow_step"):
        entry = result["tasks"][name]
        acc, acc_norm = _by_hand(model, tokenizer, name, limit)
        assert entry["n"] == limit
        assert entry["acc"] == pytest.approx(acc) and entry["acc_norm"] == pytest.approx(acc_norm)
        assert entry["value"] == entry[entry["metric"]]
    assert result["tasks"]["bb_strategyqa"]["metric"] == "acc"
    assert result["tasks"]["bb_goal_step_wikihow_step"]["metric"] == "acc_norm"
    assert result["tasks"]["bb_goal_step_wikihow_step"]["chance"] == pytest.approx(0.25)
    assert not model.training


@pytest.mark.slow
def test_default_model_offline_zeroshot_quick_run(default_loaded, prepared):
    limit = 4
    result = zeroshot(default_loaded.model, default_loaded.tokenizer, "offline", limit=limit)
    assert list(result["tasks"]) == list(OFFLINE_DEFAULT)
    for name, entry in result["tasks"].items():
        assert entry["n"] == limit and entry["offline"]
        assert 0.0 <= entry["value"] <= 1.0 and 0.0 < entry["chance"] < 1.0
        assert entry["stderr"] is not None
    values = [e["value"] for e in result["tasks"].values()]
    assert result["average"] == pytest.approx(sum(values) / len(values))


def test_zeroshot_runs_on_a_surgically_pruned_model(tokenizer, prepared):
    from bip_core.plan import make_plan
    from bip_core.scoring import score
    from bip_core.surgery import prune_model

    model = random_model(tiny_config("llama", layers=4), seed=6)
    scores = score(model, tokenizer, method="random")
    plan = make_plan(scores, model, 0.6, allocation="global", allow_empty_attention=True)
    pruned = prune_model(model, plan)
    shapes = {(g["num_heads"], g["intermediate"]) for g in pruned.config.bip_layer_shapes}
    assert len(shapes) > 1  # layers of different sizes
    result = zeroshot(pruned, tokenizer, "bb_sports_understanding", limit=4, batch_size=2)
    entry = result["tasks"]["bb_sports_understanding"]
    assert entry["n"] == 4 and 0 <= entry["value"] <= 1
    acc, _ = _by_hand(pruned, tokenizer, "bb_sports_understanding", 4)
    assert entry["acc"] == pytest.approx(acc)

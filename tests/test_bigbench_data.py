"""Conversion of BIG-bench multiple-choice examples and the prepared offline task files."""
from bip_core.bigbench_data import MC_TASKS, convert_mc_example, mc_dir, read_jsonl


def test_convert_mc_example_picks_the_best_scored_choice():
    ex = {"input": " Q? ", "target_scores": {"a": 0, "b": 1, "c": 0}}
    assert convert_mc_example(ex) == {"question": "Q?", "choices": ["a", "b", "c"], "label": 1}
    assert convert_mc_example({"input": "x", "target": "y"}) is None


def test_prepared_tasks_have_many_valid_examples():
    for name in MC_TASKS:
        rows = read_jsonl(mc_dir() / f"{name}.jsonl")
        assert len(rows) >= 500, name
        assert all(0 <= r["label"] < len(r["choices"]) for r in rows)

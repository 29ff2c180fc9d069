"""`python -m bip_core eval`: perplexity with its protocol, zero-shot and speed in one JSON report."""
import json

import pytest

from bip_core.cli import main
from bip_core.tiny_configs import tiny_config


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny"
    tiny_config("qwen3").save_pretrained(folder)
    return folder


@pytest.fixture
def text_source(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over {i} lazy dogs." * 4 for i in range(20)))
    return f"file:{path}"


def test_eval_json_reports_all_three_parts(tiny_folder, text_source, capsys):
    code = main(["eval", "--model", str(tiny_folder), "--ppl", text_source, "--split", "test", "--seq-len", "32",
                 "--windows", "3", "--tasks", "winowhy", "--limit", "3", "--speed", "--speed-batch-sizes", "1,2",
                 "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    ppl = report["perplexity"]
    assert (ppl["dataset"], ppl["split"], ppl["seq_len"], ppl["windows"], ppl["tokens"]) == (text_source, "test", 32, 3, 93)
    assert ppl["ppl"] > 1 and ppl["seconds"] >= 0
    task = report["zeroshot"]["tasks"]["bb_winowhy"]
    assert task["n"] == 3 and 0 <= task["value"] <= 1 and task["chance"] == 0.5
    assert [t["batch_size"] for t in report["speed"]["throughput"]] == [1, 2]
    assert report["model"]["family"] == "qwen3"


def test_eval_text_output_and_no_perplexity(tiny_folder, capsys):
    code = main(["eval", "--model", str(tiny_folder), "--ppl", "none", "--speed", "--speed-batch-sizes", "1",
                 "--prompt-len", "4", "--new-tokens", "1", "--repeats", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "perplexity" not in out and "MMACs/token" in out and "batch 1: prefill" in out


def test_eval_offline_hub_source_is_a_clear_error(tiny_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "--model", str(tiny_folder), "--ppl", "wikitext2", "--json"]) == 2
    assert "wiki-bb" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_default_model_quick_perplexity(capsys):
    assert main(["eval", "--model", "default", "--ppl", "wiki-bb", "--windows", "4", "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out)["perplexity"]
    assert (ppl["windows"], ppl["tokens"], ppl["split"]) == (4, 4 * 127, "test") and 5 < ppl["ppl"] < 100

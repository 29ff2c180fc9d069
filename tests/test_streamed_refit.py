"""Refit compensation on a streamed model: refit tensors in temporary files (bip_core.refit_store), overlaid on the
streamed export, which equals the in-memory refit prune + export_model."""
from __future__ import annotations

import gc
import json
import tempfile

import pytest
import torch

from bip_core.export import export_model, verify_export
from bip_core.loading import load_model, random_model
from bip_core.plan import make_plan
from bip_core.refit_store import RefitFiles, RefitMemory
from bip_core.scoring import score
from bip_core.sequential import calibrate_and_compress
from bip_core.streamed_export import prune_and_export
from bip_core.surgery import prune_model
from bip_core.tiny_configs import tiny_config
from bip_core.weights import open_weights
from failing_weights import FailingWeights

CALIBRATION = dict(source="wiki-bb", samples=8, seq_len=32, seed=0, batch_size=4)  # two batches: moments merge
IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture
def saved(tmp_path, tokenizer):
    """(model, folder, scores, plan): a random model (Qwen2: q/k/v biases) saved in small shards with the tokenizer,
    its bip scores and a 0.4 plan."""
    model = random_model(tiny_config("qwen2", gqa=True, layers=3), seed=0)
    folder = tmp_path / "base"
    model.save_pretrained(folder, max_shard_size="2MB")
    tokenizer.save_pretrained(folder)
    scores = score(model, tokenizer, "bip", model_name=str(folder), **CALIBRATION)
    return model, folder, scores, make_plan(scores, model, 0.4, "global-energy")


def assert_close_folders(streamed, in_memory):
    """Same config.json and tensor names and dtypes; tensors equal to float tolerance."""
    assert json.loads((streamed / "config.json").read_text()) == json.loads((in_memory / "config.json").read_text())
    a, b = open_weights(streamed), open_weights(in_memory)
    assert sorted(a.names()) == sorted(b.names())
    for name in b.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and torch.allclose(x, y, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("sequential", [False, True], ids=["dense", "sequential"])
def test_streamed_refit_export_equals_the_in_memory_refit_export(saved, tmp_path, tokenizer, sequential):
    model, folder, scores, plan = saved
    whole = calibrate_and_compress(model, tokenizer, plan, sequential=sequential, compensation="refit", **CALIBRATION)
    assert type(whole.refit) is RefitMemory
    reference = prune_model(model, whole.plan, scores=whole.scores, refit=whole.refit)
    in_memory = export_model(reference, tokenizer, whole.plan, tmp_path / "in-memory")

    base = load_model(str(folder), pipeline="layerwise", device="cpu", dtype="float32")
    assert base.model.lm_head.weight.device.type == "meta"  # a skeleton: the weights stay on disk
    with calibrate_and_compress(base.model, tokenizer, plan, sequential=sequential, compensation="refit",
                                weight_source=base.weights, device="cpu", dtype=torch.float32,
                                **CALIBRATION) as done:
        assert isinstance(done.refit, RefitFiles) and len(done.refit) == 3
        spill = done.refit.folder
        assert sorted(p.name for p in spill.iterdir()) == [f"layer-0000{i}.safetensors" for i in range(3)]
        assert done.plan.layers == whole.plan.layers
        streamed = prune_and_export(base.weights, base.model.config, tokenizer, done.plan, tmp_path / "streamed",
                                    refit=done.refit, max_shard_bytes=256 * 1024)
    assert not spill.exists()
    assert_close_folders(streamed, in_memory)
    verify_export(streamed)
    pruned = load_model(str(streamed)).model
    torch.testing.assert_close(logits(pruned), logits(reference), rtol=1e-4, atol=1e-4)
    assert pruned.config.bip_layer_shapes[0]["o_proj_bias"] and pruned.config.bip_bias_compensation


def test_a_failed_calibration_pass_leaves_no_temporary_files(saved, tmp_path, tokenizer, monkeypatch):
    _, folder, _, plan = saved
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    base = load_model(str(folder), pipeline="layerwise", device="cpu", dtype="float32")
    with pytest.raises(OSError, match="read error"):
        calibrate_and_compress(base.model, tokenizer, plan, sequential=False, compensation="refit",
                               weight_source=FailingWeights(base.weights, layer=2), device="cpu", dtype=torch.float32,
                               **CALIBRATION)
    assert list(spill_root.iterdir()) == []


def test_refit_files_round_trip_and_are_removed(tmp_path):
    generator = torch.Generator().manual_seed(0)
    fitted = {"o_proj": (torch.randn(4, 3, generator=generator).bfloat16(), torch.randn(4).bfloat16()),
              "down_proj": (torch.randn(4, 5, generator=generator), None)}
    store = RefitFiles()
    store.put(1, fitted)
    assert len(store) == 2 and store[0] is None and store.keys(0) == set()
    assert store.keys(1) == {"o_proj.weight", "o_proj.bias", "down_proj.weight"}
    back = store[1]
    assert back["down_proj"][1] is None
    assert all(torch.equal(back[name][0], fitted[name][0]) for name in fitted)
    assert torch.equal(back["o_proj"][1], fitted["o_proj"][1]) and back["o_proj"][0].dtype == torch.bfloat16
    folder = store.folder
    store.close()
    assert not folder.exists()
    forgotten = RefitFiles()
    forgotten.put(0, fitted)
    folder = forgotten.folder
    del forgotten
    gc.collect()
    assert not folder.exists()  # removed when the store is collected, closed or not


def test_prune_cli_streamed_refit_gives_the_whole_refit_export(saved, tmp_path, capsys):
    from bip_core.cli import main as cli_main

    _, folder, scores, _ = saved
    scores.save(tmp_path / "scores.json")
    summaries = {}
    for way in ("whole", "streamed"):
        code = cli_main(["prune", "--model", str(folder), "--scores", str(tmp_path / "scores.json"), "--ratio", "0.4",
                         "--allocation", "global-energy", "--compensation", "refit", "--device", "cpu",
                         "--dtype", "float32", "--out", str(tmp_path / way)] + (["--streamed"] if way == "streamed" else []))
        assert code == 0, capsys.readouterr().err
        summaries[way] = json.loads(capsys.readouterr().out)
    assert summaries["streamed"]["streamed"] is True and summaries["streamed"]["compensation"] == "refit"
    assert_close_folders(tmp_path / "streamed", tmp_path / "whole")
    for summary in summaries.values():
        del summary["out"], summary["seconds"], summary["streamed"]
    assert summaries["streamed"] == summaries["whole"]


SIGTERM_SCRIPT = """
import os, signal, sys, time
from bip_core.cli import exit_on_sigterm
from bip_core.refit_store import RefitFiles
import torch
store = RefitFiles()
store.put(0, {"o_proj": (torch.ones(2, 2), None)})
print(store.folder, flush=True)
exit_on_sigterm()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
"""


def test_sigterm_under_python_m_bip_core_removes_the_refit_files(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    folder = Path(result.stdout.strip())
    assert folder.parent == tmp_path and not folder.exists()

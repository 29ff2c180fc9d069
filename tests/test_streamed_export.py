"""Streamed prune + export: the same folder as prune_model + export_model, without holding the model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bip_core.errors import ExportError, PlanError
from bip_core.export import export_model, verify_export
from bip_core.loading import load_export, load_model, random_model
from bip_core.plan import make_plan
from bip_core.skeleton import empty_model as meta_model
from bip_core.streamed_export import prune_and_export
from bip_core.surgery import prune_model
from bip_core.tiny_configs import tiny_config
from bip_core.weights import INDEX_FILE, TensorEntry, open_weights, write_sharded
from fake_scores import fake_scores
from failing_weights import FailingWeights

VOCAB = 1000
IDS = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def saved_base(tmp_path, config, name="base"):
    """(model, folder): a random model saved by transformers in small shards (an index to read)."""
    model = random_model(config, seed=0)
    model.save_pretrained(tmp_path / name, max_shard_size="200KB")
    return model, tmp_path / name


def uneven_plan(model, scores):
    """Layers of different shapes, one left without attention."""
    return make_plan(scores, model, None, "manual", allow_empty_attention=True,
                     layer_ratios=[(0.5, 0.3), (1.0, 0.5), (0.0, 0.2)])


def assert_same_folders(streamed, in_memory):
    """Same config.json and the same tensors, bit for bit."""
    assert json.loads((streamed / "config.json").read_text()) == json.loads((in_memory / "config.json").read_text())
    a, b = open_weights(streamed), open_weights(in_memory)
    assert sorted(a.names()) == sorted(b.names())
    for name in b.names():
        assert a.dtype(name) == b.dtype(name) and torch.equal(a.get(name), b.get(name)), name


CASES = {"llama-gqa-compensated": ("llama", True, True), "mistral-mha": ("mistral", False, False),
         "qwen2-gqa-compensated": ("qwen2", True, True), "qwen3-mha-compensated": ("qwen3", False, True)}


@pytest.mark.parametrize("case", CASES)
def test_streamed_export_is_the_in_memory_export(tmp_path, tokenizer, case):
    family, gqa, compensate = CASES[case]
    model, base = saved_base(tmp_path, tiny_config(family, gqa=gqa, layers=3, vocab=VOCAB))
    scores = fake_scores(model)
    plan = uneven_plan(model, scores)
    reference = prune_model(model, plan, bias_compensation=compensate, scores=scores)
    in_memory = export_model(reference, tokenizer, plan, tmp_path / "in-memory")
    streamed = prune_and_export(open_weights(base), model.config, tokenizer, plan, tmp_path / "streamed",
                                bias_compensation=compensate, scores=scores, max_shard_bytes=64 * 1024)
    assert (streamed / INDEX_FILE).is_file() and len(list(streamed.glob("model-*.safetensors"))) > 1
    assert_same_folders(streamed, in_memory)
    verify_export(streamed)
    reloaded = load_model(str(streamed))
    assert torch.equal(logits(reloaded.model), logits(reference))
    assert reloaded.extra["plan"].layers == plan.layers


def test_from_a_model_in_memory_with_a_cast_and_untied_embeddings(tmp_path, tokenizer):
    from bip_core.weights import ModuleWeights

    config = tiny_config("llama", gqa=True, layers=3, vocab=VOCAB)
    config.tie_word_embeddings = False
    model = random_model(config, seed=0)
    scores = fake_scores(model)
    plan = make_plan(scores, model, 0.3, "uniform")
    folder = prune_and_export(ModuleWeights(model), model.config, tokenizer, plan, tmp_path / "bf16",
                              bias_compensation=True, scores=scores, dtype=torch.bfloat16)
    weights = open_weights(folder)
    assert "lm_head.weight" in weights and {weights.dtype(n) for n in weights.names()} == {torch.bfloat16}
    config_json = json.loads((folder / "config.json").read_text())
    assert config_json["dtype"] == "bfloat16" and config_json["tie_word_embeddings"] is False
    assert config_json["bip_studio"]["plain_loadable"] is True and config_json["attention_bias"] is True
    reference = prune_model(model, plan, bias_compensation=True, scores=scores).to(torch.bfloat16)
    assert all(torch.equal(weights.get(name), tensor) for name, tensor in reference.state_dict().items())
    torch.testing.assert_close(logits(load_export(folder).model), logits(reference.float()), rtol=0, atol=1e-6)


def test_tied_embeddings_write_no_lm_head(tmp_path):
    model, base = saved_base(tmp_path, tiny_config("qwen3", gqa=True, layers=3, vocab=VOCAB))
    plan = make_plan(fake_scores(model), model, 0.4, "global")
    folder = prune_and_export(open_weights(base), model.config, None, plan, tmp_path / "out")
    assert "lm_head.weight" not in open_weights(folder)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True


# ---- refusals and atomic writes ------------------------------------------------------------------------


def test_a_failure_mid_write_leaves_no_folder_and_no_temporary_files(tmp_path):
    model, base = saved_base(tmp_path, tiny_config("llama", gqa=True, layers=3, vocab=VOCAB))
    plan = make_plan(fake_scores(model), model, 0.3)
    out = tmp_path / "exports"
    out.mkdir()
    with pytest.raises(OSError, match="read error"):
        prune_and_export(FailingWeights(open_weights(base), layer=1), model.config, None, plan, out / "pruned",
                         max_shard_bytes=32 * 1024)
    assert list(out.iterdir()) == []


def test_weights_of_another_model_and_missing_means_are_refused(tmp_path):
    model, base = saved_base(tmp_path, tiny_config("llama", gqa=True, layers=3, vocab=VOCAB))
    plan = make_plan(fake_scores(model), model, 0.3)
    other = tiny_config("llama", gqa=True, layers=3, vocab=VOCAB, intermediate=128)
    with pytest.raises(ExportError, match="different models"):
        prune_and_export(open_weights(base), other, None, make_plan(fake_scores(meta_model(other)),
                                                                     meta_model(other), 0.3), tmp_path / "x")
    with pytest.raises(PlanError, match="another model geometry"):
        prune_and_export(open_weights(base), other, None, plan, tmp_path / "x")
    with pytest.raises(PlanError, match="o_input_mean"):
        prune_and_export(open_weights(base), model.config, None, plan, tmp_path / "x", bias_compensation=True,
                         scores=fake_scores(model, means=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


# ---- a wider model: plain transformers, remote code, peak memory ---------------------------------------

WIDE = dict(hidden=1024, heads=16, intermediate=2816, vocab=VOCAB)  # ~46 MB a layer in float32


def write_random_model(folder, config, seed=0):
    """Save a random model of `config` tensor by tensor (never the whole model in memory)."""
    skeleton = meta_model(config)
    entries = [TensorEntry(n, tuple(p.shape), torch.float32) for n, p in skeleton.state_dict(keep_vars=True).items()
               if not (n == "lm_head.weight" and config.tie_word_embeddings)]
    generator, shapes = torch.Generator().manual_seed(seed), {e.name: e.shape for e in entries}

    def fetch(name):
        shape = shapes[name]
        return torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape, generator=generator) * 0.02

    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    write_sharded(folder, entries, fetch, max_shard_bytes=100 * 1024**2)
    return sum(e.nbytes for e in entries)


def wide_base(folder, layers):
    config = tiny_config("llama", gqa=True, layers=layers, **WIDE)
    config.tie_word_embeddings = False
    nbytes = write_random_model(folder, config)
    return folder, config, nbytes


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from transformers import AutoConfig, GenerationConfig  # imports first: only the export is measured
    from bip_core.memory import PeakMemory
    from bip_core.plan import Plan
    from bip_core.scores import Scores
    from bip_core.streamed_export import prune_and_export
    from bip_core.weights import open_weights
    base, plan, scores, out = sys.argv[1:5]
    config, plan, scores = AutoConfig.from_pretrained(base), Plan.load(plan), Scores.load(scores)
    with PeakMemory(cuda=False) as memory:
        prune_and_export(open_weights(base), config, None, plan, out, bias_compensation=True, scores=scores,
                         max_shard_bytes=64 * 1024**2)
    print(json.dumps(memory.result()))
""")


@pytest.mark.slow
def test_wide_streamed_export_peaks_below_the_model_size(tmp_path):
    base, config, model_bytes = wide_base(tmp_path / "base", layers=7)  # ~320 MB
    skeleton = meta_model(config)
    scores = fake_scores(skeleton)
    plan = make_plan(scores, skeleton, 0.3, "uniform", round_to=8)
    scores.save(tmp_path / "scores.json")
    plan.save(tmp_path / "plan.json")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(base), str(tmp_path / "plan.json"),
                             str(tmp_path / "scores.json"), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    growth = memory["peak_memory_bytes"] - memory["memory_at_start_bytes"]
    print(f"model {model_bytes / 2**20:.0f} MiB; streamed export: peak RSS {memory['peak_memory_bytes'] / 2**20:.0f} "
          f"MiB, {growth / 2**20:.0f} MiB above the start")
    assert "VmHWM" in memory["peak_memory_kind"] and growth < model_bytes / 2
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    verify_export(tmp_path / "out")


REMOTE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    sys.modules["bip_core"] = None  # BIP Studio is not needed to load an export
    from transformers import AutoModelForCausalLM
    folder, ids, out = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        np.save(out, model(input_ids=ids).logits.numpy())
    print(type(model).__name__)
""")


@pytest.mark.slow
def test_wide_streamed_export_loads_in_plain_transformers(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    base, config, _ = wide_base(tmp_path / "base", layers=2)
    model = AutoModelForCausalLM.from_pretrained(base)
    scores = fake_scores(model)
    plans = {"uniform": make_plan(scores, model, 0.5, "uniform", round_to=8),  # 8 of 16 heads
             "twelve-heads": make_plan(scores, model, 0.3, "uniform", round_to=8)}  # Llama wants hidden % heads == 0
    references = {}
    for name, plan in plans.items():
        reference = references[name] = logits(prune_model(model, plan, bias_compensation=True, scores=scores))
        folder = prune_and_export(open_weights(base), config, tokenizer, plan, tmp_path / name, bias_compensation=True,
                                  scores=scores, max_shard_bytes=32 * 1024**2)
        assert (folder / INDEX_FILE).is_file()
        torch.testing.assert_close(logits(load_model(str(folder)).model), reference, rtol=0, atol=0)
        meta = json.loads((folder / "config.json").read_text())["bip_studio"]
        assert meta["plain_loadable"] is (name == "uniform")
        if meta["plain_loadable"]:  # every layer alike: plain from_pretrained, no remote code
            plain = AutoModelForCausalLM.from_pretrained(folder)
            assert type(plain) is LlamaForCausalLM and torch.equal(logits(plain), reference)
        else:
            assert "not a multiple of the number of attention heads (12)" in meta["plain_load_note"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "logits.npy"
    command = [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "twelve-heads"), json.dumps(IDS.tolist()), str(out)]
    result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["BipLlamaForCausalLM"]
    torch.testing.assert_close(torch.from_numpy(np.load(out)), references["twelve-heads"], rtol=0, atol=1e-5)


# ---- CLI ------------------------------------------------------------------------------------------------

def test_prune_cli_streamed_gives_the_same_export_and_summary(tmp_path, tokenizer, capsys):
    from bip_core.cli import main as cli_main

    model, base = saved_base(tmp_path, tiny_config("qwen2", gqa=True, layers=3, vocab=VOCAB))
    tokenizer.save_pretrained(base)
    fake_scores(model, model_name=str(base)).save(tmp_path / "scores.json")
    summaries = {}
    for way in ("whole", "streamed"):
        code = cli_main(["prune", "--model", str(base), "--scores", str(tmp_path / "scores.json"), "--ratio", "0.3",
                         "--allocation", "global", "--bias-compensation", "--out", str(tmp_path / way)]
                        + (["--streamed"] if way == "streamed" else []))
        assert code == 0
        summaries[way] = json.loads(capsys.readouterr().out)
    assert summaries["streamed"]["streamed"] is True and summaries["whole"]["streamed"] is False
    assert_same_folders(tmp_path / "streamed", tmp_path / "whole")
    for summary in summaries.values():
        del summary["out"], summary["seconds"], summary["streamed"]
    assert summaries["streamed"] == summaries["whole"]
    assert summaries["whole"]["params_after"] < summaries["whole"]["params_before"]

    code = cli_main(["prune", "--model", str(tmp_path / "nowhere"), "--scores", str(tmp_path / "scores.json"),
                     "--ratio", "0.3", "--streamed", "--out", str(tmp_path / "x")])
    assert code == 2 and "not found: no such folder" in capsys.readouterr().err

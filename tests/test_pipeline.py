"""The layer-wise pipeline (bip_core.pipeline) against the one-pass driver: same scores for every
forward method on every family, from a model in memory and from a skeleton on the meta device read
from safetensors; bfloat16 ranks like float32; memory stays below the model's size."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bip_core.architecture import block_parts
from bip_core.errors import ScoresError
from bip_core.loading import random_model
from bip_core.scoring import score
from bip_core.tiny_configs import tiny_config
from bip_core.weights import open_weights

CALIBRATION = dict(source="wiki-bb", samples=3, seq_len=24, seed=0, batch_size=2)
FORWARD_METHODS = [("bip", {}), ("bip", {"lipschitz": "measured"}), ("bip", {"lipschitz": "zero"}),
                   ("flap", {}), ("wanda-sp", {}), ("magnitude", {}), ("random", {})]
ROOT = Path(__file__).resolve().parents[1]


class SmallVocab:
    """The default tokenizer with its ids folded into a small vocabulary (small embeddings)."""

    def __init__(self, tokenizer, vocab: int):
        self.tokenizer, self.vocab, self.name_or_path = tokenizer, vocab, f"small-vocab-{vocab}"

    def __call__(self, text, **kwargs):
        ids = self.tokenizer(text, **kwargs)["input_ids"]
        return {"input_ids": [i % self.vocab for i in ids]}

    def __len__(self):
        return self.vocab


def skeleton(folder):
    """The model of `folder` on the meta device: structure only."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()


def assert_same_scores(a, b, rtol=1e-4):
    for i, (la, lb) in enumerate(zip(a.layers, b.layers, strict=True)):
        for key in ("attention", "mlp", "lipschitz_estimate", "unit_gain", "output_scale", "output_median",
                    "down_input_mean"):
            if key in la:
                assert torch.allclose(torch.tensor(la[key]), torch.tensor(lb[key]), rtol=rtol, atol=1e-9), (i, key)


def test_layerwise_equals_one_pass_for_every_forward_method(tiny_model, tokenizer):
    for method, options in FORWARD_METHODS:
        whole = score(tiny_model, tokenizer, method, **CALIBRATION, **options)
        layerwise = score(tiny_model, tokenizer, method, pipeline="layerwise", **CALIBRATION, **options)
        assert whole.meta["pipeline"] == "whole" and layerwise.meta["pipeline"] == "layerwise"
        assert layerwise.meta["device"] == "cpu" and layerwise.meta["dtype"] == "float32"
        assert_same_scores(whole, layerwise)


@pytest.fixture(scope="module")
def short_text(tmp_path_factory) -> str:
    """A calibration source of a few thousand words of wiki-bb (quick to tokenize anew)."""
    from bip_core.data import load_texts

    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text("\n\n".join(load_texts("wiki-bb", "train"))[:40_000])
    return f"file:{path}"


@pytest.fixture(scope="module")
def wide_saved(tmp_path_factory):
    """A wider model (hidden 1024, intermediate 2816, GQA, 2 layers) saved as safetensors."""
    folder = tmp_path_factory.mktemp("wide-qwen3")
    config = tiny_config("qwen3", gqa=True, layers=2, hidden=1024, heads=8, intermediate=2816, vocab=512)
    model = random_model(config, seed=0)
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.slow
def test_skeleton_read_from_safetensors_scores_like_the_model_in_memory(wide_saved, tokenizer, short_text):
    model, folder = wide_saved
    small, calibration = SmallVocab(tokenizer, 512), {**CALIBRATION, "source": short_text}
    meta_model, weights = skeleton(folder), open_weights(folder)
    assert block_parts(meta_model, 0).q_proj.weight.device.type == "meta"
    for method, options in FORWARD_METHODS:
        whole = score(model, small, method, **calibration, **options)
        streamed = score(meta_model, small, method, weight_source=weights, **calibration, **options)  # auto
        assert streamed.meta["pipeline"] == "layerwise"
        assert_same_scores(whole, streamed)
    assert block_parts(meta_model, 0).q_proj.weight.device.type == "meta"  # the skeleton stays empty


def test_clear_errors(wide_saved, tokenizer, gqa_tiny):
    _, folder = wide_saved
    with pytest.raises(ScoresError, match="skeleton.*weight_source=open_weights"):
        score(skeleton(folder), SmallVocab(tokenizer, 512), "bip", **CALIBRATION)
    with pytest.raises(ScoresError, match="taylor needs gradients.*pipeline='whole'"):
        score(gqa_tiny, tokenizer, "taylor", pipeline="layerwise", **CALIBRATION)
    with pytest.raises(ScoresError, match="Unknown pipeline"):
        score(gqa_tiny, tokenizer, "bip", pipeline="streamed", **CALIBRATION)
    with pytest.raises(ScoresError, match="model's dtype"):
        score(gqa_tiny, tokenizer, "bip", dtype=torch.bfloat16, pipeline="whole", **CALIBRATION)


@pytest.fixture(scope="module")
def gqa_tiny():
    return random_model(tiny_config("llama", gqa=True), seed=0)


def test_progress_per_layer_per_batch(gqa_tiny, tokenizer):
    seen = []
    score(gqa_tiny, tokenizer, "bip", pipeline="layerwise", progress=lambda *a: seen.append(a), **CALIBRATION)
    assert [done for done, _, _ in seen] == list(range(1, 3 * 2 + 1)) and seen[-1][1] == 6
    assert seen[0][2] == "bip: layer 1/3, batch 1/2"


def test_scoring_a_model_in_memory_reads_its_layers_in_place(gqa_tiny, tokenizer, monkeypatch):
    """Layer-wise scoring of a model already in memory on the device, in the dtype asked, copies no layer
    (statistics only read it) and leaves no hook behind; another dtype onloads converted copies."""
    import bip_core.pipeline as pipeline

    copied = []
    onload = pipeline.onload
    monkeypatch.setattr(pipeline, "onload", lambda model, module, *a: copied.append(module) or onload(model, module, *a))
    score(gqa_tiny, tokenizer, "bip", pipeline="layerwise", **CALIBRATION)
    assert copied == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gqa_tiny.modules())
    score(gqa_tiny, tokenizer, "bip", pipeline="layerwise", dtype=torch.bfloat16, **CALIBRATION)
    assert len(copied) == 1 + 3  # the embeddings and each of the 3 layers, as bfloat16 copies
    assert next(gqa_tiny.parameters()).dtype == torch.float32


def test_after_layer_changes_what_the_next_layers_see(gqa_tiny, tokenizer):
    """after_layer(i, layer, entry) may change the layer: layer 0's statistics are the dense ones, later layers
    see the outputs of the changed layer, as in a model where the change was made beforehand."""
    from bip_core.data import calibration_windows
    from bip_core.pipeline import run_layerwise
    from bip_core.scoring import bip
    from bip_core.weights import ModuleWeights

    def silence_block(i, layer, entry):  # layer 0 becomes the identity: no attention, no MLP output
        calls.append(i)
        if i == 0:
            layer.self_attn.o_proj.weight.data.zero_()
            layer.mlp.down_proj.weight.data.zero_()
        return i == 0  # changed: its outputs are computed again

    calls = []
    options = {**bip.DEFAULTS, "aggregation": "mean_abs"}
    ids = calibration_windows(tokenizer, "wiki-bb", 3, 24, 0)
    stats = [bip.Stats(gqa_tiny, i, "kv_group", options, 0) for i in range(3)]
    entries = run_layerwise(gqa_tiny, ModuleWeights(gqa_tiny), ids, stats, batch_size=2, device="cpu",
                            dtype=torch.float32, after_layer=silence_block)
    assert calls == [0, 1, 2]
    changed = copy.deepcopy(gqa_tiny)
    block_parts(changed, 0).o_proj.weight.data.zero_()
    block_parts(changed, 0).down_proj.weight.data.zero_()
    dense = score(gqa_tiny, tokenizer, "bip", aggregation="mean_abs", **CALIBRATION)
    expected = score(changed, tokenizer, "bip", aggregation="mean_abs", **CALIBRATION)
    for i, entry in enumerate(entries):
        reference = (dense if i == 0 else expected).layers[i]
        assert torch.allclose(entry["mlp"].float(), torch.tensor(reference["mlp"]), rtol=1e-4), i
        assert torch.allclose(entry["attention"].float(), torch.tensor(reference["attention"]), rtol=1e-4), i
    assert block_parts(gqa_tiny, 0).o_proj.weight.abs().sum() > 0  # the model itself is untouched


def spearman(a, b) -> float:
    rank_a, rank_b = (torch.tensor(x, dtype=torch.float64).argsort().argsort().double() for x in (a, b))
    return torch.corrcoef(torch.stack([rank_a, rank_b]))[0, 1].item()


@pytest.mark.slow
def test_bfloat16_ranks_channels_like_float32(default_loaded):
    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    calibration = dict(source="wiki-bb", samples=4, seq_len=64, seed=0)
    exact = score(model, tokenizer, "bip", **calibration)
    half = score(model, tokenizer, "bip", pipeline="layerwise", dtype=torch.bfloat16, **calibration)
    assert half.meta["dtype"] == "bfloat16" and half.meta["pipeline"] == "layerwise"
    correlations = [spearman(a["mlp"], b["mlp"]) for a, b in zip(exact.layers, half.layers)]
    attention = spearman([v for layer in exact.layers for v in layer["attention"]],
                         [v for layer in half.layers for v in layer["attention"]])
    print(f"\nbf16 vs fp32 Spearman: mlp min {min(correlations):.4f}, attention (all layers) {attention:.4f}")
    assert min(correlations) > 0.98 and attention > 0.98


@pytest.mark.slow
def test_layerwise_scoring_peaks_below_the_model_size(tmp_path, tokenizer, short_text):
    folder = tmp_path / "model"
    config = tiny_config("llama", gqa=True, layers=6, hidden=1024, heads=8, intermediate=4096, vocab=512)
    random_model(config, seed=0).save_pretrained(folder)
    size = open_weights(folder).nbytes()
    assert size > 300 * 2**20
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    script = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(1)
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from bip_core.scoring import score
        from bip_core.weights import open_weights
        from test_pipeline import SmallVocab
        tokenizer = SmallVocab(AutoTokenizer.from_pretrained({str(tmp_path / 'tokenizer')!r}), 512)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({str(folder)!r})).eval()
        scores = score(model, tokenizer, "bip", weight_source=open_weights({str(folder)!r}),
                       source={short_text!r}, samples=8, seq_len=64)
        print("RESULT " + json.dumps(scores.meta))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    grown = meta["peak_memory_bytes"] - meta["memory_at_start_bytes"]
    print(f"\nmodel {size / 2**20:.0f} MiB; layer-wise scoring grew the process by {grown / 2**20:.0f} MiB "
          f"(peak {meta['peak_memory_bytes'] / 2**20:.0f} MiB)")
    assert meta["pipeline"] == "layerwise" and grown < 0.75 * size  # one layer is 1/6 of it; the rest: lazy imports,
    # first-forward workspaces, a tensor read twice (file and copy)


def test_a_layer_runs_twice_only_when_after_layer_changed_it(gqa_tiny, tokenizer):
    """An after_layer that leaves the layer alone (returns None) costs no second pass: each layer's forward
    runs once per batch, and the scores equal those without a callback."""
    from bip_core.data import calibration_windows
    from bip_core.pipeline import run_layerwise
    from bip_core.scoring import bip
    from bip_core.weights import ModuleWeights

    ids = calibration_windows(tokenizer, "wiki-bb", 4, 24, 0)
    forwards = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: forwards.append(1) if type(module).__name__.endswith("DecoderLayer") else None)
    try:
        def run(after_layer):
            forwards.clear()
            stats = [bip.Stats(gqa_tiny, i, "kv_group", bip.DEFAULTS, 0) for i in range(3)]
            entries = run_layerwise(gqa_tiny, ModuleWeights(gqa_tiny), ids, stats, batch_size=2, device="cpu",
                                    dtype=torch.float32, after_layer=after_layer)
            return entries, len(forwards)

        plain, plain_forwards = run(None)
        watched, watched_forwards = run(lambda i, layer, entry: None)
        changed, changed_forwards = run(lambda i, layer, entry: True)
    finally:
        handle.remove()
    assert plain_forwards == watched_forwards == 3 * 2 and changed_forwards == 2 * 3 * 2
    for a, b, c in zip(plain, watched, changed):
        np.testing.assert_allclose(np.asarray(a["mlp"]), np.asarray(b["mlp"]), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(a["mlp"]), np.asarray(c["mlp"]), rtol=1e-5)

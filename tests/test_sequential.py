"""Sequential pruning and refit (bip_core.sequential) against hand-written layer-by-layer references."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bip_core.architecture import block_parts
from bip_core.loading import random_model
from bip_core.plan import make_plan
from bip_core.scoring import score
from bip_core.sequential import calibrate_and_compress, choose_kept
from bip_core.surgery import compensation_bias, kept_indices, prune_model
from bip_core.tiny_configs import tiny_config

CALIBRATION = dict(source="wiki-bb", samples=4, seq_len=24, seed=0, batch_size=2)


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config("llama", gqa=True, layers=3), seed=0)


def _logits(model, tokenizer):
    ids = tokenizer("Structured pruning removes whole heads and channels.", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _mask_layer(model, plan, i, entry):
    """Zero layer i's removed o_proj/down_proj columns and add the bias compensation from `entry`'s means."""
    parts, kept = block_parts(model, i), kept_indices(plan, i)
    with torch.no_grad():
        for name, key in (("o_proj", "o_input_mean"), ("down_proj", "down_input_mean")):
            linear, columns = getattr(parts, name), kept[name][1]
            bias = compensation_bias(linear.weight, columns, entry[key])
            removed = sorted(set(range(linear.in_features)) - set(columns))
            linear.weight[:, removed] = 0
            if bias is not None:
                linear.bias = torch.nn.Parameter(bias if linear.bias is None else linear.bias + bias)


def test_sequential_wanda_sp_equals_a_hand_written_layer_by_layer_reference(model, tokenizer):
    one_pass = score(model, tokenizer, "wanda-sp", **CALIBRATION)
    plan = make_plan(one_pass, model, 0.4, "paper")
    done = calibrate_and_compress(model, tokenizer, plan, sequential=True, compensation="bias", **CALIBRATION)

    reference, reference_plan = copy.deepcopy(model), copy.deepcopy(plan)
    counts = list(zip(*plan.kept_counts()))
    for i in range(3):  # score the partly pruned model whole, keep layer i's best, prune it, go on
        entry = score(reference, tokenizer, "wanda-sp", **CALIBRATION).layers[i]
        reference_plan.layers[i] = choose_kept(entry, counts[i])
        _mask_layer(reference, reference_plan, i, entry)
        assert np.allclose(done.scores.layers[i]["mlp"], entry["mlp"], rtol=1e-4, atol=1e-7)
    assert done.plan.layers == reference_plan.layers
    assert done.plan.kept_counts()[0].tolist() == plan.kept_counts()[0].tolist()
    pruned = prune_model(model, done.plan, bias_compensation=True, scores=done.scores)
    assert torch.allclose(_logits(pruned, tokenizer), _logits(reference, tokenizer), atol=1e-4)


def test_sequential_scores_differ_only_downstream_of_a_pruned_layer(model, tokenizer):
    one_pass = score(model, tokenizer, "wanda-sp", **CALIBRATION)
    nothing = make_plan(one_pass, model, 0.0, "uniform")
    same = calibrate_and_compress(model, tokenizer, nothing, sequential=True, compensation="none", **CALIBRATION)
    for a, b in zip(same.scores.layers, one_pass.layers):  # nothing pruned upstream: the one-pass scores
        assert np.allclose(a["mlp"], b["mlp"], rtol=1e-5) and np.allclose(a["attention"], b["attention"], rtol=1e-5)
    pruned = make_plan(one_pass, model, 0.5, "paper")
    seq = calibrate_and_compress(model, tokenizer, pruned, sequential=True, compensation="none", **CALIBRATION)
    assert np.allclose(seq.scores.layers[0]["mlp"], one_pass.layers[0]["mlp"], rtol=1e-5)  # layer 0: dense inputs
    assert not np.allclose(seq.scores.layers[1]["mlp"], one_pass.layers[1]["mlp"], rtol=1e-3)


def _down_inputs(model, tokenizer) -> torch.Tensor:
    """Layer 1's down_proj inputs on the calibration windows (dense model)."""
    from bip_core.data import calibration_windows

    seen = []
    handle = block_parts(model, 1).down_proj.register_forward_hook(lambda _m, a, _o: seen.append(a[0].flatten(0, 1)))
    with torch.no_grad():
        model(input_ids=calibration_windows(tokenizer, "wiki-bb", 16, 32, 0))
    handle.remove()
    return torch.cat(seen)


def test_dense_refit_keeps_the_plan_and_fits_better_than_a_bias(model, tokenizer):
    calibration = {**CALIBRATION, "samples": 16, "seq_len": 32, "batch_size": 8}
    scores = score(model, tokenizer, "bip", **calibration)
    plan = make_plan(scores, model, 0.4, "uniform")
    refit = calibrate_and_compress(model, tokenizer, plan, sequential=False, compensation="refit", **calibration)
    assert refit.plan.layers == plan.layers and refit.plan.meta["compensation"] == "refit"
    assert "o_input_covariance" not in refit.scores.layers[0]  # never saved
    with_refit = prune_model(model, refit.plan, scores=refit.scores, refit=refit.refit)
    with_bias = prune_model(model, plan, bias_compensation=True, scores=scores)
    m = _down_inputs(model, tokenizer)  # the dense inputs both were fitted on
    kept = kept_indices(plan, 1)["down_proj"][1]
    dense = block_parts(model, 1).down_proj(m)
    error = {name: (block_parts(pruned, 1).down_proj(m[:, kept]) - dense).pow(2).mean().item()
             for name, pruned in (("refit", with_refit), ("bias", with_bias))}
    assert error["refit"] < error["bias"]  # least squares beats the mean on the data it was fitted on
    o_proj = block_parts(with_refit, 0).o_proj
    assert o_proj.weight.shape[1] == len(kept_indices(plan, 0)["o_proj"][1]) and o_proj.bias is not None
    assert with_refit.config.bip_layer_shapes[0]["o_proj_bias"]


def test_compression_needs_a_forward_method(model, tokenizer):
    from bip_core.errors import PlanError

    plan = make_plan(score(model, tokenizer, "magnitude"), model, 0.3, "uniform")
    with pytest.raises(PlanError, match="forward method"):
        calibrate_and_compress(model, tokenizer, plan, **CALIBRATION)


def test_prune_cli_asks_for_scores_before_a_sequential_prune(model, tmp_path, capsys):
    """A sequential or compensated prune needs --scores: without them the CLI says so before loading anything.
    A plan alone prunes as asked, without the method's practice (Wanda-sp: sequential), and says so."""
    from bip_core.cli import main as cli_main
    from fake_scores import fake_scores

    scores = fake_scores(model)
    scores.meta["method"] = "wanda-sp"
    make_plan(scores, model, 0.3, "paper").save(tmp_path / "plan.json")
    for asked in (["--sequential"], ["--compensation", "refit"], ["--bias-compensation"]):
        code = cli_main(["prune", "--model", str(tmp_path / "never-loaded"), "--plan", str(tmp_path / "plan.json"),
                         *asked, "--out", str(tmp_path / "out")])
        assert code == 2 and "--scores is needed" in capsys.readouterr().err and not (tmp_path / "out").exists()
    code = cli_main(["prune", "--model", str(tmp_path / "never-loaded"), "--plan", str(tmp_path / "plan.json"),
                     "--out", str(tmp_path / "out")])
    said = capsys.readouterr().err
    assert "no --scores, so pruned without compensation in one pass" in said and "not found" in said


def test_a_dense_refit_pass_runs_only_cheap_statistics_and_fits_the_same(model, tokenizer):
    """compress_like's dense refit skips the method's own statistics: same refit tensors as a pass with the
    method itself (means and covariances do not depend on it), and the given scores back."""
    from bip_core.sequential import compress_like

    scores = score(model, tokenizer, "bip", **CALIBRATION)
    plan = make_plan(scores, model, 0.4, "uniform")
    light = compress_like(model, tokenizer, plan, scores, sequential=False, compensation="refit")
    full = calibrate_and_compress(model, tokenizer, plan, sequential=False, compensation="refit",
                                  **{**CALIBRATION, "batch_size": 8})  # compress_like's batches: the same sums
    assert light.scores is scores and light.plan.layers == plan.layers
    assert light.plan.meta["compensation"] == "refit"
    for i in range(3):
        for name in ("o_proj", "down_proj"):
            for a, b in zip(light.refit[i][name], full.refit[i][name]):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (i, name)

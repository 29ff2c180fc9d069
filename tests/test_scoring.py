"""The scoring engine against real behaviour: ablations of real blocks, determinism, errors, offload."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from bip_core.architecture import block_parts, decoder_layers, model_geometry
from bip_core import calibration
from bip_core.calibration import (RunningMoments, centred_column_sums, column_sum, column_sum_of_abs,
                                  weight_rows, weight_sums)
from bip_core.cli import main as cli_main
from bip_core.data import calibration_windows
from bip_core.errors import DataError, ScoresError
from bip_core.loading import load_model, random_model
from bip_core.scores import Scores
from bip_core.scoring import METHODS, score
from bip_core.scoring.bip import mlp_together
from bip_core.scoring.units import head_channels
from bip_core.tiny_configs import tiny_config

CALIBRATION = dict(source="wiki-bb", samples=3, seq_len=24, seed=0)


# ---- helpers: run one real block, in float64, with units removed -----------------------------------
def block_inputs(model, tokenizer, indices):
    """{index: (input, keyword arguments)} of those blocks when the model runs over the scoring windows."""
    ids = calibration_windows(tokenizer, "wiki-bb", CALIBRATION["samples"], CALIBRATION["seq_len"],
                              CALIBRATION["seed"])
    captured = {}

    def grab(index):
        def hook(_module, args, kwargs):
            captured[index] = (args[0].detach(), dict(kwargs))
        return hook

    handles = [decoder_layers(model)[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in indices]
    try:
        with torch.no_grad():
            model.model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _to64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    if isinstance(value, tuple):
        return tuple(_to64(v) for v in value)
    return value


class Block64:
    """A float64 copy of one decoder block, run on captured inputs; h = the residual after attention."""

    def __init__(self, model, index, x, kwargs):
        self.layer = copy.deepcopy(decoder_layers(model)[index]).double()
        self.x, self.kwargs = x.double(), {k: _to64(v) for k, v in kwargs.items()}
        self.parts = block_parts(SimpleNamespace(model=SimpleNamespace(layers=[self.layer])), 0)

    def run(self):
        """(y, h): block output and post-attention residual, [tokens, hidden] each."""
        seen = {}
        handle = self.parts.post_norm.register_forward_hook(lambda _m, args, _o: seen.update(h=args[0]))
        with torch.no_grad():
            y = self.layer(self.x, **self.kwargs)
        handle.remove()
        y = y[0] if isinstance(y, tuple) else y
        return y.reshape(-1, y.shape[-1]), seen["h"].reshape(-1, y.shape[-1])

    def without(self, columns_of: str, channels: list[int], bias: torch.Tensor | None = None):
        """Outputs with the given input channels of o_proj / down_proj zeroed (optionally plus a bias)."""
        linear = getattr(self.parts, columns_of)
        saved_w, saved_b = linear.weight.data.clone(), linear.bias
        linear.weight.data[:, channels] = 0
        if bias is not None:
            linear.bias = torch.nn.Parameter(bias if saved_b is None else saved_b + bias)
        try:
            return self.run()
        finally:
            linear.weight.data, linear.bias = saved_w, saved_b


def mean_norm(d):
    return d.norm(dim=-1).mean().item()


def rms_norm(d):
    return d.norm(dim=-1).pow(2).mean().sqrt().item()


def channels_to_check(values, count=4):
    order = sorted(range(len(values)), key=values.__getitem__)
    picks = order[:2] + order[-2:] + order[len(order) // 2: len(order) // 2 + count]
    return sorted(set(picks))


def check_block(model, inputs, index, unit, bip_scores, direct_scores, report):
    """Channel scores are the exact mean block-output change; unit scores bound it."""
    x, kwargs = inputs[index]
    block = Block64(model, index, x, kwargs)
    y, h = block.run()
    layer, direct = bip_scores.layers[index], direct_scores.layers[index]
    for j in channels_to_check(layer["mlp"]):
        y_cut, _ = block.without("down_proj", [j])
        assert mean_norm(y - y_cut) == pytest.approx(layer["mlp"][j], rel=1e-4, abs=1e-9), f"layer {index} channel {j}"
    geometry = model_geometry(model)[index]
    for g in range(geometry.num_units(unit)):
        q_heads, _ = geometry.unit_heads(unit, g)
        y_cut, h_cut = block.without("o_proj", head_channels(q_heads, geometry.head_dim))
        measured, bound = mean_norm(y - y_cut), layer["attention"][g]
        # L = 0: the score is exactly mean_t ||delta_tg||, the change of the residual h
        assert mean_norm(h - h_cut) == pytest.approx(direct["attention"][g], rel=1e-4, abs=1e-9)
        assert measured <= bound * (1 + 1e-6), f"layer {index} unit {g}: change {measured} > bound {bound}"
        report.append((index, g, measured, bound))


# ---- ablation checks --------------------------------------------------------------------------------
def test_bip_ablation_on_default_model(default_loaded, capsys):
    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    indices = (0, 11, 29)  # 11 holds a massive-activation channel
    inputs = block_inputs(model, tokenizer, indices)
    for unit in ("kv_group", "query_slot"):
        bip = score(model, tokenizer, "bip", unit=unit, aggregation="mean_abs", lipschitz="measured", probe_share=0,
                    **CALIBRATION)
        direct = score(model, tokenizer, "bip", unit=unit, aggregation="mean_abs", lipschitz="zero", **CALIBRATION)
        report = []
        for index in indices:
            check_block(model, inputs, index, unit, bip, direct, report)
        with capsys.disabled():
            print(f"\n[default model, {unit}] measured/bound per unit: "
                  + " ".join(f"L{i}u{g}:{m / b:.2f}" for i, g, m, b in report))


def test_bip_ablation_on_tiny_models(tiny_model, tokenizer, capsys):
    geometry = model_geometry(tiny_model)[0]
    units = ["head"] if geometry.n_rep == 1 else ["kv_group", "query_slot"]
    inputs = block_inputs(tiny_model, tokenizer, range(len(decoder_layers(tiny_model))))
    for unit in units:
        bip = score(tiny_model, tokenizer, "bip", unit=unit, aggregation="mean_abs", lipschitz="measured",
                    probe_share=0, **CALIBRATION)
        direct = score(tiny_model, tokenizer, "bip", unit=unit, aggregation="mean_abs", lipschitz="zero", **CALIBRATION)
        report = []
        for index in range(len(decoder_layers(tiny_model))):
            check_block(tiny_model, inputs, index, unit, bip, direct, report)
        worst = max(m / b for _, _, m, b in report)
        with capsys.disabled():
            print(f"\n[{tiny_model.config.model_type} {unit}] largest measured/bound = {worst:.3f}")


def test_directional_gain_makes_unit_scores_the_measured_block_output_change(tiny_model, tokenizer):
    """With every calibration token probed (probe_share=0, 72 tokens), gain_g * mean_t ||delta_tg|| is
    exactly mean_t ||Delta y_tg||: the block-output change of removing unit g, through the MLP."""
    geometry = model_geometry(tiny_model)[0]
    units = ["head"] if geometry.n_rep == 1 else ["kv_group", "query_slot"]
    layers = range(len(decoder_layers(tiny_model)))
    inputs = block_inputs(tiny_model, tokenizer, layers)
    for unit in units:
        scores = score(tiny_model, tokenizer, "bip", unit=unit, aggregation="mean_abs", lipschitz="directional",
                       probe_share=0, **CALIBRATION)
        for index in layers:
            block = Block64(tiny_model, index, *inputs[index])
            y, _ = block.run()
            layer, geom = scores.layers[index], model_geometry(tiny_model)[index]
            assert len(layer["unit_gain"]) == geom.num_units(unit)
            for g in range(geom.num_units(unit)):
                y_cut, _ = block.without("o_proj", head_channels(geom.unit_heads(unit, g)[0], geom.head_dim))
                assert layer["attention"][g] == pytest.approx(mean_norm(y - y_cut), rel=1e-4), (unit, index, g)


def test_centred_bip_is_the_change_left_after_bias_compensation(tiny_model, tokenizer):
    """aggregation="std": channel score = RMS block-output change with the channel's mean added back as
    a bias; unit score (L = 0) = RMS change of h with the unit's mean output added back."""
    scores = score(tiny_model, tokenizer, "bip", aggregation="std", lipschitz="zero", **CALIBRATION)
    x, kwargs = block_inputs(tiny_model, tokenizer, [1])[1]
    block = Block64(tiny_model, 1, x, kwargs)
    y, h = block.run()
    layer, geometry = scores.layers[1], model_geometry(tiny_model)[1]
    w_down, w_o = block.parts.down_proj.weight.data, block.parts.o_proj.weight.data
    down_mean = torch.tensor(layer["down_input_mean"], dtype=torch.float64)
    o_mean = torch.tensor(layer["o_input_mean"], dtype=torch.float64)
    for j in channels_to_check(layer["mlp"]):
        y_cut, _ = block.without("down_proj", [j], bias=w_down[:, j] * down_mean[j])
        assert rms_norm(y - y_cut) == pytest.approx(layer["mlp"][j], rel=1e-3)
    for g in range(geometry.num_units(scores.unit)):
        cols = head_channels(geometry.unit_heads(scores.unit, g)[0], geometry.head_dim)
        _, h_cut = block.without("o_proj", cols, bias=w_o[:, cols] @ o_mean[cols])
        assert rms_norm(h - h_cut) == pytest.approx(layer["attention"][g], rel=1e-3)


def test_lipschitz_and_output_scale_are_recorded(tiny_model, tokenizer):
    scores = score(tiny_model, tokenizer, "bip", lipschitz="measured", **CALIBRATION)
    x, kwargs = block_inputs(tiny_model, tokenizer, [0])[0]
    y, _ = Block64(tiny_model, 0, x, kwargs).run()
    layer = scores.layers[0]
    assert layer["lipschitz"] > 0
    assert layer["lipschitz_estimate"] == layer["lipschitz"]
    assert layer["output_scale"] == pytest.approx(mean_norm(y), rel=1e-4)
    assert layer["output_median"] == pytest.approx(y.norm(dim=-1).flatten().median().item(), rel=1e-4)  # all batches
    assert score(tiny_model, tokenizer, "bip", **CALIBRATION).meta["options"]["lipschitz"] == "directional"
    zero = score(tiny_model, tokenizer, "bip", lipschitz="zero", **CALIBRATION).layers[0]
    assert zero["lipschitz"] == 0
    assert zero["lipschitz_estimate"] == pytest.approx(layer["lipschitz"])  # still measured, for the chart
    ratio = torch.tensor(layer["attention"]) / torch.tensor(zero["attention"])
    assert torch.allclose(ratio, torch.full_like(ratio, 1 + layer["lipschitz"]), rtol=1e-5)


# ---- every method: schema, determinism ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gqa_model():
    return random_model(tiny_config("llama", gqa=True), seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_same_schema_and_deterministic(gqa_model, tokenizer, method):
    first = score(gqa_model, tokenizer, method, **CALIBRATION)
    again = score(gqa_model, tokenizer, method, **CALIBRATION)
    assert first.layers == again.layers
    geometry = model_geometry(gqa_model)
    assert len(first.layers) == len(geometry)
    for layer, g in zip(first.layers, geometry):
        assert len(layer["attention"]) == g.num_key_value_heads and len(layer["mlp"]) == g.intermediate_size
        assert all(v >= 0 for v in layer["attention"] + layer["mlp"])
    meta = first.meta
    for key in ("method", "model", "source", "samples", "seq_len", "seed", "unit", "seconds",
                "peak_memory_bytes", "geometry", "options"):
        assert key in meta
    assert meta["method"] == method and meta["unit"] == "kv_group" and meta["peak_memory_bytes"] > 0
    Scores.from_dict(json.loads(json.dumps(first.to_dict()))).check_matches(gqa_model)


@pytest.mark.parametrize("method", ["bip", "random", "taylor"])
def test_other_seed_other_scores(gqa_model, tokenizer, method):
    a = score(gqa_model, tokenizer, method, **CALIBRATION)
    b = score(gqa_model, tokenizer, method, **{**CALIBRATION, "seed": 1})
    assert a.layers[0]["mlp"] != b.layers[0]["mlp"]


def test_query_slot_units(gqa_model, tokenizer):
    for method in METHODS:
        scores = score(gqa_model, tokenizer, method, unit="query_slot", **CALIBRATION)
        assert all(len(layer["attention"]) == g.n_rep for layer, g in zip(scores.layers, model_geometry(gqa_model)))


def test_baselines_follow_their_formulas(gqa_model, tokenizer):
    """Spot checks against the formulas, computed here from the weights and captured activations."""
    index, geometry = 1, model_geometry(gqa_model)[1]
    parts = block_parts(gqa_model, index)
    w_o, w_down = parts.o_proj.weight.detach(), parts.down_proj.weight.detach()
    seen = {}
    handles = [parts.o_proj.register_forward_hook(lambda _m, a, _o: seen.update(z=a[0].reshape(-1, a[0].shape[-1]))),
               parts.down_proj.register_forward_hook(lambda _m, a, _o: seen.update(m=a[0].reshape(-1, a[0].shape[-1])))]
    ids = calibration_windows(tokenizer, "wiki-bb", CALIBRATION["samples"], CALIBRATION["seq_len"], 0)
    with torch.no_grad():
        gqa_model.model(input_ids=ids)
    for handle in handles:
        handle.remove()
    z, m = seen["z"].double(), seen["m"].double()
    unit_cols = head_channels(geometry.unit_heads("kv_group", 0)[0], geometry.head_dim)

    wanda = score(gqa_model, tokenizer, "wanda-sp", **CALIBRATION).layers[index]
    expected = w_down.abs().mean(0).double() * m.norm(dim=0)
    assert torch.allclose(torch.tensor(wanda["mlp"], dtype=torch.float64), expected, rtol=1e-4)
    expected_unit = (w_o.abs().mean(0).double() * z.norm(dim=0))[unit_cols].sum()
    assert wanda["attention"][0] == pytest.approx(expected_unit.item(), rel=1e-4)

    flap = score(gqa_model, tokenizer, "flap", **CALIBRATION).layers[index]
    expected = m.var(0) * w_down.double().pow(2).sum(0)
    assert torch.allclose(torch.tensor(flap["mlp"], dtype=torch.float64), expected, rtol=1e-3)
    o_score = (z.var(0) * w_o.double().pow(2).sum(0)) ** 2
    assert flap["attention"][0] == pytest.approx(o_score[unit_cols].mean().item(), rel=1e-3)
    assert flap["standardisation"]["attention"][0] == pytest.approx(o_score.mean().item(), rel=1e-3)

    mag = score(gqa_model, tokenizer, "magnitude", norm="l1").layers[index]
    expected = (parts.gate_proj.weight.abs().sum(1) + parts.up_proj.weight.abs().sum(1) + w_down.abs().sum(0))
    assert torch.allclose(torch.tensor(mag["mlp"]), expected.detach(), rtol=1e-5)
    out = score(gqa_model, tokenizer, "magnitude", weights="output").layers[index]
    assert torch.allclose(torch.tensor(out["mlp"]), w_down.norm(dim=0), rtol=1e-5)


def test_taylor_matches_a_manual_backward(gqa_model, tokenizer):
    ids = calibration_windows(tokenizer, "wiki-bb", CALIBRATION["samples"], CALIBRATION["seq_len"], 0)
    model = copy.deepcopy(gqa_model)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    parts = block_parts(model, 2)
    s_gate, s_up = (p.weight * p.weight.grad for p in (parts.gate_proj, parts.up_proj))
    s_down = parts.down_proj.weight * parts.down_proj.weight.grad
    element1 = score(gqa_model, tokenizer, "taylor", batch_size=1, **CALIBRATION).layers[2]["mlp"]
    vector = score(gqa_model, tokenizer, "taylor", variant="vector", **CALIBRATION).layers[2]["mlp"]
    expected1 = s_gate.abs().sum(1) + s_up.abs().sum(1) + s_down.abs().sum(0)
    expected_v = s_gate.sum(1).abs() + s_up.sum(1).abs() + s_down.sum(0).abs()
    assert torch.allclose(torch.tensor(element1), expected1.detach(), rtol=1e-3, atol=1e-9)
    assert torch.allclose(torch.tensor(vector), expected_v.detach(), rtol=1e-3, atol=1e-9)
    assert all(p.grad is None and p.requires_grad for p in gqa_model.parameters())  # state restored


# ---- clear errors -------------------------------------------------------------------------------------
def test_unknown_method_option_and_unit(gqa_model, tokenizer):
    with pytest.raises(ScoresError, match="Unknown scoring method 'obs'.*bip"):
        score(gqa_model, tokenizer, "obs", **CALIBRATION)
    with pytest.raises(ScoresError, match="no option 'lipschitz'"):
        score(gqa_model, tokenizer, "flap", lipschitz="zero", **CALIBRATION)
    with pytest.raises(ScoresError, match="aggregation.*must be one of"):
        score(gqa_model, tokenizer, "bip", aggregation="median", **CALIBRATION)
    with pytest.raises(ScoresError, match="lipschitz_quantile"):
        score(gqa_model, tokenizer, "bip", lipschitz_quantile=1.5, **CALIBRATION)
    with pytest.raises(ScoresError, match="'head' is for MHA"):
        score(gqa_model, tokenizer, "bip", unit="head", **CALIBRATION)


def test_too_few_calibration_tokens(gqa_model, tokenizer, tmp_path):
    with pytest.raises(ScoresError, match="Too few calibration tokens"):
        score(gqa_model, tokenizer, "bip", samples=1, seq_len=8)
    with pytest.raises(ScoresError, match="longer than the model's context"):
        score(gqa_model, tokenizer, "bip", samples=1, seq_len=4096)
    short = tmp_path / "short.txt"
    short.write_text("A very short text.")
    with pytest.raises(DataError, match="fewer than one window"):
        score(gqa_model, tokenizer, "bip", source=f"file:{short}", samples=4, seq_len=64)


def test_scores_from_another_model(gqa_model, tokenizer):
    scores = score(gqa_model, tokenizer, "magnitude")
    other = random_model(tiny_config("llama", gqa=True, intermediate=80), seed=0)
    with pytest.raises(ScoresError, match="another model.*intermediate 96.*intermediate 80"):
        scores.check_matches(other)
    fewer = random_model(tiny_config("llama", gqa=True, layers=2), seed=0)
    with pytest.raises(ScoresError, match="3 layers.*2 layers"):
        scores.check_matches(fewer)


# ---- large models: accelerate device_map="auto", offloaded weights ---------------------------------
@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    random_model(tiny_config("qwen2", gqa=True), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("placement", ["auto", "offload"])
def test_scores_equal_on_accelerate_dispatched_models(saved_tiny, tokenizer, tmp_path, placement):
    from transformers import AutoModelForCausalLM

    plain = load_model(str(saved_tiny)).model
    if placement == "auto":
        dispatched = load_model(str(saved_tiny), device_map="auto").model
    else:  # a few MB of "CPU": most weights go to disk and are loaded per module during the pass
        dispatched = AutoModelForCausalLM.from_pretrained(
            saved_tiny, device_map="auto", max_memory={"cpu": "2MB"}, offload_folder=str(tmp_path / "offload"),
            dtype=torch.float32).eval()
        assert block_parts(dispatched, 1).down_proj.weight.device.type == "meta"
    for method, options in [("bip", {}), ("bip", {"aggregation": "std"}), ("flap", {}), ("wanda-sp", {}),
                            ("magnitude", {})]:
        a = score(plain, tokenizer, method, **CALIBRATION, **options)
        b = score(dispatched, tokenizer, method, **CALIBRATION, **options)
        for la, lb in zip(a.layers, b.layers):
            for key in ("attention", "mlp"):
                assert torch.allclose(torch.tensor(la[key]), torch.tensor(lb[key]), rtol=1e-5, atol=1e-10), method
    if placement == "offload":
        with pytest.raises(ScoresError, match="offloaded"):
            score(dispatched, tokenizer, "taylor", **CALIBRATION)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_score(saved_tiny, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = cli_main(["score", "--model", str(saved_tiny), "--method", "bip", "--data", "wiki-bb", "--samples", "2",
                     "--seq-len", "16", "--seed", "3", "--unit", "query_slot", "--lipschitz", "zero", "--out", str(out)])
    assert code == 0
    scores = Scores.load(out)
    assert scores.meta["unit"] == "query_slot" and scores.meta["seed"] == 3
    assert scores.meta["options"]["lipschitz"] == "zero" and scores.meta["model"] == str(saved_tiny)
    assert "bip: batch 1/1" in capsys.readouterr().err  # the progress bar
    assert cli_main(["score", "--model", str(saved_tiny), "--method", "nope", "--out", str(out)]) == 2
    assert "Unknown scoring method 'nope'" in capsys.readouterr().err
    assert cli_main(["score", "--model", str(saved_tiny), "--samples", "1", "--seq-len", "4", "--out", str(out)]) == 2
    assert "Too few calibration tokens" in capsys.readouterr().err


# ---- pruned models: layers of different widths, an attention sub-block removed entirely -----------
def test_scoring_a_pruned_model(gqa_model, tokenizer):
    from bip_core.plan import make_plan
    from bip_core.surgery import prune_model

    magnitude = score(gqa_model, tokenizer, "magnitude")
    plan = make_plan(magnitude, gqa_model, None, allocation="manual", allow_empty_attention=True,
                     layer_ratios=[(1.0, 0.25), (0.5, 0.5), (0.0, 0.0)])
    pruned = prune_model(gqa_model, plan)
    geometry = model_geometry(pruned)
    assert [g.num_key_value_heads for g in geometry] == [0, 1, 2]
    for method in METHODS:
        scores = score(pruned, tokenizer, method, **CALIBRATION)
        assert [len(layer["attention"]) for layer in scores.layers] == [0, 1, 2], method
        assert [len(layer["mlp"]) for layer in scores.layers] == [g.intermediate_size for g in geometry], method
        scores.check_matches(pruned)
        json.dumps(scores.to_dict(), allow_nan=False)  # savable: no NaN anywhere
    # the channel scores (mean_abs: the paper's formula) of the emptied layer are still exact block-output changes
    bip = score(pruned, tokenizer, "bip", aggregation="mean_abs", **CALIBRATION)
    x, kwargs = block_inputs(pruned, tokenizer, [0])[0]
    block = Block64(pruned, 0, x, kwargs)
    y, _ = block.run()
    for j in channels_to_check(bip.layers[0]["mlp"]):
        y_cut, _ = block.without("down_proj", [j])
        assert mean_norm(y - y_cut) == pytest.approx(bip.layers[0]["mlp"][j], rel=1e-4)


@pytest.mark.parametrize("covariance", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_running_moments_return_and_take_the_token_sum(covariance, dtype, monkeypatch):
    """add() returns the batch's token sum and, given it back, adds exactly as without it, in place; mean and
    scatter match float64 even where the mean is far larger than the spread, also for bfloat16 tokens
    converted a few rows at a time (blocks of 2 rows here)."""
    monkeypatch.setattr(calibration, "BLOCK_BYTES", 2 * 4 * 3 * 7)
    x = (torch.randn(3, 50, 7, generator=torch.Generator().manual_seed(0)) + 100).to(dtype)
    own, given = RunningMoments(covariance), RunningMoments(covariance)
    for chunk in x.split(17, dim=1):
        total = own.add(chunk)
        assert torch.allclose(total.double(), chunk.double().sum(1, keepdim=True), rtol=1e-6)
        given.add(chunk, total)
        if own.count == 17:
            scatter = own.shifted.data_ptr()
    assert own.shifted.data_ptr() == scatter  # later batches were added in place
    x = x.double()
    d = x - x.mean(1, keepdim=True)
    scatter = d.transpose(1, 2) @ d if covariance else d.square().sum(1)
    for moments in (own, given):
        assert torch.allclose(moments.mean.double(), x.double().mean(1, keepdim=True), rtol=1e-6)
        assert torch.allclose(moments.m2.double(), scatter, rtol=1e-4, atol=1e-3)
    assert torch.equal(own.m2, given.m2)
    assert torch.equal(given.take_m2(), own.m2) and given.shifted is None  # in place, given up
    assert torch.allclose(column_sum(x[0].to(dtype)).double(), x[0].sum(0, keepdim=True), rtol=1e-6)
    signed = x[0].to(dtype) - 100
    assert torch.allclose(column_sum_of_abs(signed).double(), signed.double().abs().sum(0, keepdim=True), rtol=1e-5)
    raw = x[0].to(dtype)
    before = raw.clone()
    deviation, squares = centred_column_sums(raw, torch.full((1, 7), 100.0))  # both from one read, block by block
    assert torch.equal(raw, before)  # float32 blocks are views of x: they are not changed in place
    assert torch.allclose(deviation.double(), (x[0] - 100).sum(0, keepdim=True), rtol=1e-5, atol=1e-4)
    assert torch.allclose(squares.double(), (x[0] - 100).square().sum(0, keepdim=True), rtol=1e-5)


def test_weight_sums_match_the_whole_weight_in_blocks(monkeypatch):
    """Column and row sums of a Linear's weight computed a few rows at a time (bfloat16 weight) equal
    those of the whole weight in float64."""
    monkeypatch.setattr(calibration, "BLOCK_BYTES", 3 * 4 * 11)
    linear = torch.nn.Linear(11, 10, bias=False).to(torch.bfloat16)
    w = linear.weight.detach().double()
    assert torch.allclose(weight_sums(linear, torch.square, 0).double(), w.square().sum(0), rtol=1e-6)
    assert torch.allclose(weight_sums(linear, torch.abs, 1).double(), w.abs().sum(1), rtol=1e-6)
    assert torch.equal(torch.cat(list(weight_rows(linear))), linear.weight.float())


def test_probes_share_one_mlp_pass():
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.SiLU(), torch.nn.Linear(9, 6))
    inputs = [torch.randn(3, 4, 6), torch.randn(5, 6)]
    calls = []
    mlp.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        together = mlp_together(mlp, inputs)
        for y, x in zip(together, inputs, strict=True):
            assert y.shape == x.shape and torch.allclose(y, mlp(x), atol=1e-6)
    assert len(calls) == 1 + len(inputs)  # one pass for both, then the two checks


@pytest.mark.parametrize("features", [7, 128, 192, 600])
def test_symmetric_products_accumulate_on_the_upper_blocks_and_mirror_to_the_whole(features):
    from bip_core.calibration import add_outer_upper, mirror_upper, symmetric_blocks

    d = torch.randn(2, 3, 40, features, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    into = torch.zeros(3, features, features, dtype=torch.float64)
    add_outer_upper(into, d[0])
    add_outer_upper(into, d[1])
    bounds = symmetric_blocks(features)
    assert len(bounds) - 1 == (1 if features < 128 else 2 if features < 512 else 4)
    if len(bounds) > 2:  # below the diagonal: untouched until mirrored
        assert not into[..., bounds[1]:, :bounds[1]].any()
    whole = d[0].mT @ d[0] + d[1].mT @ d[1]
    assert torch.allclose(mirror_upper(into), whole, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("covariance", [False, True])
def test_running_moments_of_long_batches_far_from_zero_match_float64(covariance):
    """Batches longer than SHIFT_TOKENS (the shift is the mean of spaced tokens of the first) and 130 features
    (a scatter matrix accumulated on its upper blocks): mean and scatter as in float64, mean 1000 x the spread."""
    from bip_core.calibration import SHIFT_TOKENS

    x = torch.randn(2, 3 * SHIFT_TOKENS + 5, 130, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x * torch.linspace(0.5, 2, 130, dtype=torch.float64) + 1000
    moments = RunningMoments(covariance)
    for chunk in x.split(2 * SHIFT_TOKENS + 1, dim=1):
        moments.add(chunk.float())
    d = x - x.mean(1, keepdim=True)
    scatter = d.mT @ d if covariance else d.square().sum(1)
    assert torch.allclose(moments.mean.double(), x.mean(1, keepdim=True), rtol=1e-6)
    assert torch.allclose(moments.m2.double(), scatter, rtol=2e-3, atol=0.5)
    assert torch.allclose(moments.m2.double().diagonal(dim1=-2, dim2=-1) if covariance else moments.m2.double(),
                          d.square().sum(1), rtol=2e-3)


def test_probes_cost_a_fixed_share_of_the_pass_whatever_the_unit_count(default_loaded, tokenizer):
    """The gain and L probes together run one MLP token-pass per `probe_share` (64) calibration tokens, so a
    layer with many units (16 heads here, like a 7B layer's 32) does not pay (units + 1) x the probe tokens,
    and the probes use at least MIN_PROBE_TOKENS tokens; the default model's probes use 8 tokens at 16 x 128,
    32 at 64 x 128 and 128 (the most, lipschitz_tokens) from 256 x 128 up."""
    from bip_core.scoring import bip

    share = bip.DEFAULTS["probe_share"]
    assert share == 64
    model = random_model(tiny_config("llama", gqa=False, layers=1, heads=16), seed=0)
    mlp = block_parts(model, 0).mlp
    rows = []
    handle = mlp.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[:-1].numel()))
    try:
        for samples in (2, 128):
            rows.clear()
            score(model, tokenizer, "bip", source="wiki-bb", samples=samples, seq_len=128, seed=0)
            tokens, units = samples * 128, 16
            probe_rows = sum(rows) - tokens  # the block's own MLP passes carry every calibration token once
            per_probe = max(bip.MIN_PROBE_TOKENS, -(-tokens // (share * (units + 1))))
            assert probe_rows == (units + 1) * per_probe  # 17 x 4 tokens (the floor), then 17 x 16
            assert probe_rows <= max(tokens / share + units + 1, (units + 1) * bip.MIN_PROBE_TOKENS)
    finally:
        handle.remove()
    assert per_probe == 16
    options = dict(bip.DEFAULTS)
    stats = bip.Stats(default_loaded.model, 0, "kv_group", options, 0)
    sizes = ((16 * 128, 8), (64 * 128, 32), (256 * 128, 128), (1024 * 128, 128), (4 * 128, bip.MIN_PROBE_TOKENS),
             (128, bip.MIN_PROBE_TOKENS))
    for planned, probed in sizes:
        stats.begin(planned)
        assert stats.probe_tokens() == probed
    stats = bip.Stats(default_loaded.model, 0, "kv_group", dict(options, probe_share=0), 0)
    stats.begin(16 * 128)
    assert stats.probe_tokens() == options["lipschitz_tokens"]  # probe_share=0: every token, up to the cap


def test_stratified_pick_always_samples_the_outlier_tokens_and_weighs_each_stratum_by_its_size():
    from bip_core.scoring.bip import OUTLIER_FACTOR, stratified_pick

    f = torch.randn(1000, 64)
    f[::125] *= 10 * OUTLIER_FACTOR  # 8 tokens where the MLP writes an outlier, like the first position of 8 windows
    outliers = set(range(0, 1000, 125))
    for wanted, from_outliers in ((32, 8), (10, 2), (4, 1)):  # at most a quarter of the probe goes to the outliers
        picked, weight = stratified_pick(f, wanted, torch.Generator().manual_seed(0))
        assert len(picked) == wanted == len(set(picked.tolist()))
        chosen = [i in outliers for i in picked.tolist()]
        assert sum(chosen) == from_outliers
        mask = torch.tensor(chosen)
        assert weight[mask].sum().item() == pytest.approx(8) and weight[~mask].sum().item() == pytest.approx(992)
    picked, weight = stratified_pick(f, 1000, torch.Generator().manual_seed(0))  # every token: each stands for itself
    assert sorted(picked.tolist()) == list(range(1000)) and torch.all(weight == 1)
    plain = torch.randn(1000, 64)  # no outliers: one stratum, a random draw
    picked, weight = stratified_pick(plain, 32, torch.Generator().manual_seed(0))
    assert len(set(picked.tolist())) == 32 and torch.allclose(weight, torch.full((32,), 1000 / 32))


def test_stratified_probes_measure_the_gain_where_a_few_tokens_carry_the_blocks_change(default_loaded, tokenizer):
    """The default model's layer 11 writes a massive activation at each window's first token, and those 4 tokens
    in 512 carry about half of the change that removing a unit makes to the block's output. With 8 probe tokens
    (4 x 128 calibration tokens, probe_share=16) the stratified draw (2 of the first tokens, 6 others) measures
    the gains within 20% of probing every token; a random draw that misses the first tokens gets about half."""
    calibration = dict(source="wiki-bb", samples=4, seq_len=128, seed=0, probe_share=16)
    model = default_loaded.model

    def gains(**options):
        return score(model, tokenizer, "bip", **{**calibration, **options}).layers[11]["unit_gain"]

    every = torch.tensor(gains(probe_share=0, lipschitz_tokens=512))
    stratified = torch.tensor(gains(probe_sampling="stratified"))
    assert torch.all((stratified / every - 1).abs() < 0.2), (stratified, every)
    random = torch.tensor(gains(probe_sampling="random"))
    assert torch.all((random / every - 1) < -0.4), (random, every)

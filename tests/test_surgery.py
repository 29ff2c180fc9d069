"""Surgery: the pruned model equals the masked model, generates with a KV cache, leaves the original alone."""
from __future__ import annotations

import pytest
import torch

from bip_core.architecture import block_parts, count_params, decoder_layers, model_geometry
from bip_core.errors import PlanError
from bip_core.loading import random_model
from bip_core.plan import make_plan
from bip_core.surgery import mask_model, prune_model
from bip_core.tiny_configs import tiny_config
from fake_scores import fake_scores, permutation_scores


def units_for(model):
    return ("head",) if model_geometry(model)[0].n_rep == 1 else ("kv_group", "query_slot")


def uneven_plan(model, scores):
    """A manual plan with a different shape in every layer, one attention sub-block removed entirely."""
    n_layers = len(model_geometry(model))
    ratios = [(0.5, 0.3), (0.0, 0.9), (1.0, 0.1)][:n_layers] + [(0.25, 0.5)] * max(0, n_layers - 3)
    return make_plan(scores, model, None, "manual", layer_ratios=ratios, allow_empty_attention=True)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_same_logits(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, a.abs().max().item()))


IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


# ---- equivalence with masks ---------------------------------------------------------------------------

def test_pruned_equals_masked_on_every_family(tiny_model):
    for unit in units_for(tiny_model):
        scores = fake_scores(tiny_model, unit=unit)
        plans = {"uniform": make_plan(scores, tiny_model, 0.4, "uniform"),
                 "global": make_plan(scores, tiny_model, 0.4, "global"),
                 "uneven": uneven_plan(tiny_model, scores)}
        for name, plan in plans.items():
            for compensate in (False, True):
                pruned = prune_model(tiny_model, plan, bias_compensation=compensate, scores=scores)
                masked = mask_model(tiny_model, plan, bias_compensation=compensate, scores=scores)
                assert_same_logits(logits(pruned, IDS), logits(masked, IDS))
                shapes = [(g.num_attention_heads, g.num_key_value_heads, g.intermediate_size) for g in model_geometry(pruned)]
                assert shapes == [(s["num_heads"], s["num_kv_heads"], s["intermediate"]) for s in plan.pruned_shapes()]
        assert count_params(prune_model(tiny_model, plans["uneven"]))["total"] == plans["uneven"].summary()["params_after"]


@pytest.mark.slow
@pytest.mark.parametrize("unit", ("kv_group", "query_slot"))
def test_pruned_equals_masked_on_the_default_model(default_loaded, unit):
    model = default_loaded.model
    scores = fake_scores(model, unit=unit)
    plan = make_plan(scores, model, 0.3, "global-std")  # layers of different widths
    assert len({len(layer["mlp"]) for layer in plan.layers}) > 1
    pruned, masked = prune_model(model, plan), mask_model(model, plan)
    ids = default_loaded.tokenizer("The capital of France is Paris, and the capital of Italy is",
                                   return_tensors="pt").input_ids
    assert_same_logits(logits(pruned, ids), logits(masked, ids))
    assert count_params(pruned)["total"] == plan.summary()["params_after"]


def test_module_attributes_and_config_are_fixed():
    model = random_model(tiny_config("qwen3", gqa=True, layers=3, heads=8), seed=0)  # n_rep 2, 4 KV groups
    scores = fake_scores(model, unit="query_slot")
    plan = make_plan(scores, model, None, "manual", layer_ratios=[(0.5, 0.25)] * 3)
    pruned = prune_model(model, plan)
    for i, layer in enumerate(decoder_layers(pruned)):
        attn = layer.self_attn
        assert attn.num_key_value_groups == 1 and attn.q_proj.out_features == 4 * attn.head_dim
        assert attn.q_norm.weight.shape == (attn.head_dim,)  # Qwen3 norms act per head_dim: untouched
        assert layer.mlp.intermediate_size == layer.mlp.gate_proj.out_features == 72
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 4, 72)
    assert config.head_dim == model.config.head_dim and len(config.bip_layer_shapes) == 3
    assert model.config.num_attention_heads == 8  # the original's config is its own


def test_qwen2_biases_follow_their_rows():
    model = random_model(tiny_config("qwen2", gqa=True), seed=0)
    plan = make_plan(fake_scores(model), model, 0.4, "uniform")
    pruned = prune_model(model, plan)
    q_heads, kv_heads = plan.kept_heads(0)
    hd = model_geometry(model)[0].head_dim
    rows = [h * hd + d for h in q_heads for d in range(hd)]
    assert torch.equal(block_parts(pruned, 0).q_proj.bias, block_parts(model, 0).q_proj.bias[rows])
    kv_rows = [h * hd + d for h in kv_heads for d in range(hd)]
    assert torch.equal(block_parts(pruned, 0).v_proj.bias, block_parts(model, 0).v_proj.bias[kv_rows])


# ---- generation with a KV cache -----------------------------------------------------------------------

def generate(model, ids, use_cache=True):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              use_cache=use_cache, pad_token_id=0)


@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_generate_with_cache_on_an_uneven_model(family):
    model = random_model(tiny_config(family, gqa=True, layers=4), seed=0)
    scores = fake_scores(model)
    plan = make_plan(scores, model, None, "manual", allow_empty_attention=True,
                     layer_ratios=[(1.0, 0.2), (0.5, 0.6), (0.0, 0.1), (0.5, 0.0)])  # layer 0: no attention at all
    pruned, masked = prune_model(model, plan), mask_model(model, plan)
    assert [g.num_attention_heads for g in model_geometry(pruned)] == [0, 2, 4, 2]
    ids = IDS[:1]
    out = generate(pruned, ids)
    assert out.shape[1] == ids.shape[1] + 8
    assert torch.equal(out, generate(masked, ids))
    assert torch.equal(out, generate(pruned, ids, use_cache=False))


@pytest.mark.slow
def test_generate_on_the_pruned_default_model(default_loaded):
    model, tok = default_loaded.model, default_loaded.tokenizer
    plan = make_plan(fake_scores(model), model, 0.2, "global-std")
    pruned, masked = prune_model(model, plan), mask_model(model, plan)
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    assert torch.equal(generate(pruned, ids), generate(masked, ids))


# ---- the original is never modified ---------------------------------------------------------------------

def test_original_weights_stay_bit_identical_and_can_be_pruned_again(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    config_before = tiny_model.config.to_dict()
    scores = fake_scores(tiny_model)
    first = prune_model(tiny_model, make_plan(scores, tiny_model, 0.5, "global"), bias_compensation=True, scores=scores)
    mask_model(tiny_model, make_plan(scores, tiny_model, 0.5, "global"), bias_compensation=True, scores=scores)
    second_plan = make_plan(scores, tiny_model, 0.2, "uniform")
    second = prune_model(tiny_model, second_plan)
    after = tiny_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tiny_model.config.to_dict() == config_before
    assert count_params(first)["total"] < count_params(second)["total"] < count_params(tiny_model)["total"]
    assert_same_logits(logits(second, IDS), logits(mask_model(tiny_model, second_plan), IDS))


# ---- bias compensation ---------------------------------------------------------------------------------

def test_bias_compensation_puts_back_the_mean_of_pruned_columns():
    model = random_model(tiny_config("llama", gqa=True), seed=0)
    x = torch.randn(50, 96, generator=torch.Generator().manual_seed(1)) + 0.5  # inputs of down_proj, layer 0
    scores = fake_scores(model, down_input_mean=[x.mean(0).tolist()] + [[0.0] * 96] * 2)
    plan = make_plan(scores, model, 0.5, "uniform")
    pruned = prune_model(model, plan, bias_compensation=True, scores=scores)
    dense_down, pruned_down = block_parts(model, 0).down_proj, block_parts(pruned, 0).down_proj
    kept = plan.layers[0]["mlp"]
    with torch.no_grad():
        dense_mean = dense_down(x).mean(0)
        pruned_mean = pruned_down(x[:, kept]).mean(0)
    torch.testing.assert_close(pruned_mean, dense_mean, rtol=1e-5, atol=1e-5)
    assert pruned.config.bip_layer_shapes[0]["down_proj_bias"] is True


def test_bias_compensation_needs_the_mean_inputs(tiny_model):
    plan = make_plan(fake_scores(tiny_model), tiny_model, 0.3)
    with pytest.raises(PlanError, match="needs the scores"):
        prune_model(tiny_model, plan, bias_compensation=True)
    with pytest.raises(PlanError, match="o_input_mean"):
        prune_model(tiny_model, plan, bias_compensation=True, scores=fake_scores(tiny_model, means=False))


def test_a_plan_for_another_model_is_refused(default_loaded):
    tiny = random_model(tiny_config("llama", gqa=True), seed=0)
    plan = make_plan(fake_scores(tiny), tiny, 0.2)
    with pytest.raises(PlanError, match="another model geometry"):
        prune_model(default_loaded.model, plan)
    with pytest.raises(PlanError, match="another model geometry"):
        mask_model(default_loaded.model, plan)


# ---- the kept rows are the planned ones ---------------------------------------------------------------

def _rows(heads, head_dim):
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def test_pruned_weights_are_exactly_the_kept_rows_and_columns(tiny_model):
    """Every pruned Linear equals the original's rows/columns of the plan's kept heads and channels, in order."""
    for unit in units_for(tiny_model):
        scores = permutation_scores(tiny_model, unit, seed=3)
        for plan in (make_plan(scores, tiny_model, 0.4, "global"), uneven_plan(tiny_model, scores)):
            pruned = prune_model(tiny_model, plan)
            for i, geom in enumerate(plan.geometry()):
                old, new = block_parts(tiny_model, i), block_parts(pruned, i)
                q_heads, kv_heads = plan.kept_heads(i)
                q, kv, channels = _rows(q_heads, geom.head_dim), _rows(kv_heads, geom.head_dim), plan.layers[i]["mlp"]
                assert len(q) == new.q_proj.out_features == new.o_proj.in_features
                if q:
                    assert torch.equal(new.q_proj.weight, old.q_proj.weight[q])
                    assert torch.equal(new.k_proj.weight, old.k_proj.weight[kv])
                    assert torch.equal(new.v_proj.weight, old.v_proj.weight[kv])
                    assert torch.equal(new.o_proj.weight, old.o_proj.weight[:, q])
                    if old.q_proj.bias is not None:
                        assert torch.equal(new.q_proj.bias, old.q_proj.bias[q])
                        assert torch.equal(new.k_proj.bias, old.k_proj.bias[kv])
                assert torch.equal(new.gate_proj.weight, old.gate_proj.weight[channels])
                assert torch.equal(new.up_proj.weight, old.up_proj.weight[channels])
                assert torch.equal(new.down_proj.weight, old.down_proj.weight[:, channels])


def test_compensation_bias_is_the_mean_output_of_the_pruned_columns():
    from bip_core.surgery import compensation_bias

    weight = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    mean = torch.arange(6, dtype=torch.float32)
    bias = compensation_bias(weight, [0, 2, 3], mean.tolist())
    assert bias.dtype == torch.bfloat16
    assert torch.equal(bias, (weight.float()[:, [1, 4, 5]] @ mean[[1, 4, 5]]).to(torch.bfloat16))
    assert compensation_bias(weight, list(range(6)), mean) is None


def test_a_layer_without_attention_keeps_no_q_k_v_biases():
    model = random_model(tiny_config("qwen2", gqa=True), seed=0)  # q/k/v biases
    plan = make_plan(fake_scores(model), model, None, "manual", allow_empty_attention=True,
                     layer_ratios=[(1.0, 0.2), (0.5, 0.2), (0.5, 0.2)])
    names = prune_model(model, plan).state_dict().keys()
    assert not [n for n in names if n.startswith("model.layers.0.self_attn.") and n.endswith("proj.bias")]
    assert "model.layers.1.self_attn.q_proj.bias" in names

"""Size and speed: MACs from the module shapes (checked against torch's FLOP counter), measured throughput."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bip_core.loading import random_model
from bip_core.speed import compare, count_macs, measure_speed
from bip_core.tiny_configs import tiny_config
from nonuniform import shrink_mlp


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_macs_formula_by_hand(family):
    config = tiny_config(family, gqa=True)
    model = random_model(config)
    h, heads, kv, inter = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    hd = config.head_dim
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    macs = count_macs(model, context=10)
    assert macs["per_token_linear"] == config.num_hidden_layers * per_layer + h * config.vocab_size
    assert macs["per_token_attention"] == config.num_hidden_layers * 2 * heads * hd * 10
    assert macs["per_token"] == macs["per_token_linear"] + macs["per_token_attention"]
    assert macs["per_sequence"] == 10 * macs["per_token_linear"] + macs["attention_per_context_token"] * 55


@pytest.mark.parametrize("shrink", [False, True])
def test_macs_match_torch_flop_counter_for_one_token(shrink):
    config = tiny_config("mistral")
    config._attn_implementation = "eager"  # plain matmuls, which the FLOP counter sees (CPU SDPA kernels it skips)
    model = random_model(config, seed=0)
    if shrink:
        shrink_mlp(model, 1, 30)
    ids = torch.tensor([[5, 6, 7]])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    # eager attention computes the full 3x3 score matrix (then masks it): context 3 for every token
    macs = count_macs(model, context=3)
    assert counter.get_total_flops() == 2 * 3 * macs["per_token"]


def test_measure_speed_fields_and_sane_values(tokenizer):
    config = tiny_config("llama")
    model = random_model(config)
    result = measure_speed(model, tokenizer, batch_sizes=(1, 3), prompt_len=16, new_tokens=4, repeats=3)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings listed once
    assert result["params"]["total"] == params
    assert 0 < result["params"]["attention_mlp"] < params
    assert result["memory"]["weight_bytes"] == 4 * params and result["memory"]["dtype"] == "float32"
    kv = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4
    assert result["memory"]["kv_cache_bytes_per_token"] == kv
    assert [t["batch_size"] for t in result["throughput"]] == [1, 3]
    for t in result["throughput"]:
        assert len(t["prefill_times"]) == len(t["decode_times"]) == 3
        assert sorted(t["prefill_times"])[1] == pytest.approx(t["prefill_seconds"], abs=1e-5)  # median
        assert t["prefill_tokens_per_s"] == pytest.approx(t["batch_size"] * 16 / t["prefill_seconds"])
        assert t["decode_tokens_per_s"] == pytest.approx(t["batch_size"] * 4 / t["decode_seconds"])
        assert 0 < t["decode_ms_per_step"] < 10_000
    assert result["settings"]["torch_threads"] == torch.get_num_threads()
    assert result["settings"]["prompt_len"] == 16 and result["macs"]["context"] == 16
    assert not model.training


def _planned_macs(plan, config, context: int) -> int:
    """MACs per token of the pruned model, from the plan's kept heads and channels alone."""
    h, linear, attention = config.hidden_size, config.hidden_size * config.vocab_size, 0
    for shape in plan.pruned_shapes():
        q, kv = shape["num_heads"] * shape["head_dim"], shape["num_kv_heads"] * shape["head_dim"]
        linear += 2 * h * q + 2 * h * kv + 3 * h * shape["intermediate"]
        attention += 2 * q * context
    return linear + attention


def test_compare_dense_and_pruned(tokenizer):
    from bip_core.plan import make_plan
    from bip_core.surgery import prune_model
    from fake_scores import fake_scores

    config = tiny_config("llama", gqa=True)
    dense = random_model(config, seed=0)
    plan = make_plan(fake_scores(dense, unit="kv_group"), dense, 0.4, "global")
    pruned = prune_model(dense, plan)
    settings = dict(batch_sizes=(1,), prompt_len=8, new_tokens=2, repeats=1)
    a, b = measure_speed(dense, tokenizer, **settings), measure_speed(pruned, tokenizer, **settings)
    ratios = compare(a, b)
    summary = plan.summary()
    assert b["params"]["total"] == summary["params_after"] < a["params"]["total"] == summary["params_before"]
    assert ratios["params_ratio"] == pytest.approx(summary["params_after"] / summary["params_before"])
    assert ratios["attention_mlp_removed_fraction"] == pytest.approx(summary["removed_attention_mlp"])
    assert b["macs"]["per_token"] == _planned_macs(plan, config, 8)
    assert ratios["macs_ratio"] == pytest.approx(_planned_macs(plan, config, 8) / a["macs"]["per_token"])
    assert ratios["macs_ratio"] < 1
    kept_kv = sum(s["num_kv_heads"] for s in plan.pruned_shapes())
    assert ratios["kv_cache_ratio"] == pytest.approx(kept_kv / (config.num_hidden_layers * config.num_key_value_heads))
    assert ratios["weight_memory_ratio"] == pytest.approx(ratios["params_ratio"])
    assert ratios["same_settings"] and [s["batch_size"] for s in ratios["speedups"]] == [1]
    assert ratios["speedups"][0]["prefill_speedup"] == pytest.approx(
        b["throughput"][0]["prefill_tokens_per_s"] / a["throughput"][0]["prefill_tokens_per_s"])


@pytest.mark.slow
def test_default_model_speed_is_measured(default_loaded):
    result = measure_speed(default_loaded.model, default_loaded.tokenizer, batch_sizes=(1, 8), prompt_len=32,
                           new_tokens=4, repeats=1)
    assert 134_000_000 < result["params"]["total"] < 135_000_000
    assert 134e6 < result["macs"]["per_token"] < 137e6  # linear ~134.5M + attention over 32 positions
    b1, b8 = result["throughput"]
    assert b1["prefill_tokens_per_s"] > 5 and b8["decode_tokens_per_s"] > 1

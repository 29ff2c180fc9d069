"""Streaming generation: greedy equals model.generate, seeded sampling is reproducible, side by side."""
import copy

import pytest
import torch

from bip_core.generation import (build_prompt_ids, generate, next_token, stream_generate, stream_generate_stats,
                                 stream_side_by_side)
from bip_core.loading import random_model
from bip_core.tiny_configs import tiny_config


@pytest.fixture(scope="module")
def tiny():
    return random_model(tiny_config("qwen2"), seed=7)


def _reference_greedy(model, tokenizer, prompt, n, chat_template=None) -> str:
    ids, _ = build_prompt_ids(tokenizer, prompt, chat_template)
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_streamed_greedy_equals_model_generate(tiny, tokenizer):
    chunks = list(stream_generate(tiny, tokenizer, "Once upon a time", max_new_tokens=12, temperature=0))
    assert len(chunks) >= 2
    assert chunks[-1] == _reference_greedy(tiny, tokenizer, "Once upon a time", 12)
    assert generate(tiny, tokenizer, "Once upon a time", max_new_tokens=12, temperature=0)["text"] == chunks[-1]


def test_stream_grows_and_ends_with_the_full_text(tiny, tokenizer):
    chunks = list(stream_generate(tiny, tokenizer, "Hello", max_new_tokens=10, temperature=0.9, seed=1))
    assert all(len(a) <= len(b) for a, b in zip(chunks, chunks[1:]))
    result = generate(tiny, tokenizer, "Hello", max_new_tokens=10, temperature=0.9, seed=1)
    assert chunks[-1] == result["text"]
    assert result["new_tokens"] <= 10 and result["stop_reason"] in ("eos", "length")
    assert result["chat_template"] is True and result["prompt_tokens"] > 5


def test_streamed_stats_count_the_generated_tokens(tiny, tokenizer):
    stats = list(stream_generate_stats(tiny, tokenizer, "Hello", max_new_tokens=10, temperature=0.9, seed=1))
    result = generate(tiny, tokenizer, "Hello", max_new_tokens=10, temperature=0.9, seed=1)
    assert [s["new_tokens"] for s in stats] == list(range(1, len(stats) + 1))[:len(stats) - 1] + [result["new_tokens"]]
    assert stats[-1]["done"] and not stats[0]["done"] and stats[-1]["text"] == result["text"]
    assert stats[-1]["prompt_tokens"] == result["prompt_tokens"] and stats[-1]["new_tokens"] <= 10


def test_same_seed_same_text_other_seed_other_text(tiny, tokenizer):
    settings = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
    a = generate(tiny, tokenizer, "The weather", seed=3, **settings)["text"]
    torch.manual_seed(123)  # the global RNG must not matter
    b = generate(tiny, tokenizer, "The weather", seed=3, **settings)["text"]
    c = generate(tiny, tokenizer, "The weather", seed=4, **settings)["text"]
    assert a == b and a != c


def test_plain_continuation_without_chat_template(tiny, tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    ids, used = build_prompt_ids(plain, "The capital of France is")
    assert not used and ids[0].tolist() == tokenizer("The capital of France is").input_ids
    ids, used = build_prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert used and "<|im_start|>assistant" in tokenizer.decode(ids[0])
    text = generate(tiny, plain, "The capital of France is", max_new_tokens=8, temperature=0)["text"]
    assert text == _reference_greedy(tiny, plain, "The capital of France is", 8)
    with pytest.raises(ValueError, match="chat template"):
        build_prompt_ids(plain, "x", chat_template=True)


def test_sampling_filters():
    logits = torch.tensor([1.0, 3.0, 2.9, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert next_token(logits, [], 0.0, 1.0, 0, 1.0, gen) == 1  # greedy
    assert all(next_token(logits, [], 1.0, 1.0, 1, 1.0, gen) == 1 for _ in range(20))  # top-k 1
    assert all(next_token(logits, [], 1.0, 0.01, 0, 1.0, gen) == 1 for _ in range(20))  # tiny top-p
    picks = {next_token(logits, [], 1.0, 0.8, 0, 1.0, gen) for _ in range(200)}
    assert picks == {1, 2}  # nucleus keeps the two likely tokens, never the tail
    assert next_token(logits, [1], 0.0, 1.0, 0, 2.0, gen) == 2  # repetition penalty demotes a seen token


def test_side_by_side_uses_identical_settings(tiny, tokenizer):
    twin = copy.deepcopy(tiny)
    other = random_model(tiny_config("qwen2"), seed=8)
    rounds = list(stream_side_by_side({"original": tiny, "twin": twin, "other": other}, tokenizer, "Hi there",
                                      max_new_tokens=8, temperature=0.8, seed=5))
    final = rounds[-1]
    assert all(entry["done"] for entry in final.values())
    assert final["original"]["text"] == final["twin"]["text"]
    expected = generate(tiny, tokenizer, "Hi there", max_new_tokens=8, temperature=0.8, seed=5)["text"]
    assert final["original"]["text"] == expected
    assert final["other"]["text"] == generate(other, tokenizer, "Hi there", max_new_tokens=8, temperature=0.8,
                                              seed=5)["text"]


@pytest.mark.slow
def test_default_model_chat_answer_streams(default_loaded):
    model, tok = default_loaded.model, default_loaded.tokenizer
    chunks = list(stream_generate(model, tok, "What is the capital of France?", max_new_tokens=12, temperature=0))
    assert "Paris" in chunks[-1]
    assert chunks[-1] == _reference_greedy(model, tok, "What is the capital of France?", 12)


def test_side_by_side_with_a_pruned_model(tiny, tokenizer):
    from bip_core.plan import make_plan
    from bip_core.scoring import score
    from bip_core.surgery import prune_model

    plan = make_plan(score(tiny, tokenizer, method="magnitude"), tiny, 0.5, allocation="global",
                     allow_empty_attention=True)
    pruned = prune_model(tiny, plan)
    final = list(stream_side_by_side({"original": tiny, "pruned": pruned}, tokenizer, "Hi", max_new_tokens=6,
                                     temperature=0))[-1]
    assert final["original"]["text"] == _reference_greedy(tiny, tokenizer, "Hi", 6)
    assert final["pruned"]["text"] == _reference_greedy(pruned, tokenizer, "Hi", 6)

"""Perplexity: the paper protocol (windows, token counts), a hand-computed NLL, no LM-head waste."""
import math
import time

import pytest
import torch

from bip_core.errors import OfflineError
from bip_core.loading import load_model, random_model
from bip_core.perplexity import paper_split, perplexity, window_nll
from bip_core.tiny_configs import tiny_config
from nonuniform import shrink_mlp


@pytest.fixture
def text_file(tmp_path, tokenizer):
    docs = [("The river flows north past the old mill and the church. " * 12).strip(),
            ("A small town with a market square and seven bridges. " * 12).strip(),
            ("Numbers 12 345 and 6789 appear here, with punctuation; quotes \"too\". " * 9).strip()]
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(docs))
    return path, tokenizer("\n\n".join(docs), add_special_tokens=False).input_ids


def _reference_nll(model, windows: torch.Tensor) -> tuple[float, int]:
    """Independent computation: full logits, log_softmax in float64, next-token log-probs."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logp.gather(-1, windows[:, 1:, None]).squeeze(-1)
    return -picked.sum().item(), picked.numel()


def test_windows_and_token_counts_follow_the_protocol(tokenizer, text_file):
    path, full = text_file
    model = random_model(tiny_config("llama"), seed=0)
    result = perplexity(model, tokenizer, f"file:{path}", "test", seq_len=16, batch_size=3)
    n = len(full) // 16  # non-overlapping windows, remainder dropped
    assert result["windows"] == result["total_windows"] == n
    assert result["tokens"] == n * 15  # each window scores its L-1 next-token predictions
    assert result["tokens_in_windows"] == n * 16
    assert (result["dataset"], result["split"], result["seq_len"]) == (f"file:{path}", "test", 16)
    assert result["ppl"] == pytest.approx(math.exp(result["nll"]))
    assert "15 next-token predictions" in result["protocol"]
    limited = perplexity(model, tokenizer, f"file:{path}", "test", seq_len=16, windows=2)
    assert (limited["windows"], limited["tokens"], limited["total_windows"]) == (2, 30, n)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_nll_matches_a_hand_computation_in_float64(tokenizer, text_file, family):
    path, full = text_file
    model = random_model(tiny_config(family), seed=1)
    result = perplexity(model, tokenizer, f"file:{path}", "test", seq_len=16, batch_size=2)
    windows = torch.tensor(full[: result["windows"] * 16]).view(-1, 16)
    total, count = _reference_nll(model, windows)
    assert count == result["tokens"]
    assert result["nll"] == pytest.approx(total / count, abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_batching_and_chunking_do_not_change_the_result(tokenizer, text_file):
    path, full = text_file
    model = random_model(tiny_config("mistral"), seed=2)
    windows = torch.tensor(full[: (len(full) // 12) * 12]).view(-1, 12)
    reference = window_nll(model, windows, batch_size=len(windows))
    for batch_size, budget in ((1, 4 * 49152), (4, 4 * 49152 * 7), (5, 2**30)):
        total, count = window_nll(model, windows, batch_size=batch_size, logits_budget_bytes=budget)
        assert count == reference[1]
        assert total == pytest.approx(reference[0], rel=1e-6)


def test_lm_head_sees_only_scored_positions_in_small_chunks(tokenizer, text_file):
    path, full = text_file
    model = random_model(tiny_config("llama"), seed=0)
    windows = torch.tensor(full[: 5 * 16]).view(5, 16)
    rows_seen = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: rows_seen.append(out.shape))
    try:
        budget = 4 * 49152 * 20  # 20 rows of float32 logits
        total, count = window_nll(model, windows, batch_size=2, logits_budget_bytes=budget)
    finally:
        handle.remove()
    assert count == 5 * 15
    assert sum(math.prod(s[:-1]) for s in rows_seen) == 5 * 15  # never the last position of a window
    assert all(s[0] <= 20 and len(s) == 2 for s in rows_seen)  # 2-D chunks of at most 20 rows


def test_non_uniform_and_device_mapped_models(tokenizer, text_file, tmp_path):
    path, full = text_file
    model = random_model(tiny_config("llama"), seed=3)
    shrink_mlp(model, 1, 40)
    result = perplexity(model, tokenizer, f"file:{path}", "test", seq_len=16)
    windows = torch.tensor(full[: result["windows"] * 16]).view(-1, 16)
    total, count = _reference_nll(model, windows)
    assert result["nll"] == pytest.approx(total / count, abs=1e-5)

    dense = random_model(tiny_config("qwen2"), seed=4)
    dense.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    mapped = load_model(str(tmp_path / "m"), device_map={"": "cpu"}).model
    a = perplexity(dense, tokenizer, f"file:{path}", "test", seq_len=16)
    b = perplexity(mapped, tokenizer, f"file:{path}", "test", seq_len=16)
    assert a["nll"] == pytest.approx(b["nll"], abs=1e-6)


def test_paper_splits_and_offline_fail_fast(tokenizer, monkeypatch):
    assert (paper_split("wikitext2"), paper_split("ptb"), paper_split("wiki-bb")) == ("test", "valid", "test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_model(tiny_config("llama"))
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="wiki-bb"):
        perplexity(model, tokenizer, "wikitext2")
    with pytest.raises(OfflineError):
        perplexity(model, tokenizer, "ptb")
    assert time.perf_counter() - t0 < 5


@pytest.mark.slow
def test_default_model_quick_perplexity_is_sane(default_loaded):
    result = perplexity(default_loaded.model, default_loaded.tokenizer, "wiki-bb", windows=8)
    assert (result["dataset"], result["split"], result["windows"], result["tokens"]) == ("wiki-bb", "test", 8, 8 * 127)
    assert 10 < result["ppl"] < 80  # 31.6 over 256 windows (METHOD.md section 7)

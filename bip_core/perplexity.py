"""Perplexity with the paper protocol (METHOD.md section 5), batched and without LM-head waste.

Protocol: the split's texts are joined with "\\n\\n" and tokenized once, then cut into
non-overlapping windows of `seq_len` tokens (the remainder is dropped; see
`bip_core.data.perplexity_windows`). Each window is scored independently on its `seq_len - 1`
next-token predictions (token t+1 given tokens 0..t of the same window), and

    PPL = exp(sum of token NLLs over all windows / number of scored tokens).

Cost: the decoder runs once per batch for hidden states; the LM head (49152 wide for the default
model) is applied only to the positions that are scored, in chunks of rows small enough that a
float32 logits chunk stays around `logits_budget_bytes`, and cross-entropy is taken per chunk.
So no [batch, seq_len, vocab] logits tensor is ever materialised.

Default splits follow the papers: WikiText-2 test, PTB validation, wiki-bb test (offline), C4
validation. Online sources fail fast with an OfflineError when the Hub cannot be reached.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .architecture import input_device
from .data import perplexity_windows

PAPER_SPLIT = {"wikitext2": "test", "ptb": "valid", "wiki-bb": "test", "c4": "valid"}
LOGITS_BUDGET_BYTES = 64 * 2**20  # one float32 logits chunk: 64 MiB (341 rows of 49152)


def paper_split(source: str) -> str:
    """The split the papers report for `source` (test for WikiText-2, validation for PTB)."""
    return PAPER_SPLIT.get(source, "test")


def _split_model(model):
    """(decoder that returns hidden states, LM head), or (None, None) when they cannot be separated."""
    base = getattr(model, "base_model", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is model or head is None:
        return None, None
    return base, head


def _chunk_rows(vocab: int, budget_bytes: int) -> int:
    return max(1, budget_bytes // (4 * vocab))


def _nll_from_hidden(hidden: torch.Tensor, targets: torch.Tensor, head, rows: int) -> float:
    """Sum of next-token NLLs: LM head + cross-entropy over `rows` positions at a time."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    total = 0.0
    for start in range(0, hidden.shape[0], rows):
        logits = head(hidden[start:start + rows]).float()
        total += F.cross_entropy(logits, targets[start:start + rows].to(logits.device),
                                 reduction="sum").double().item()
    return total


def window_nll(model, input_ids: torch.Tensor, batch_size: int = 8, progress=None,
               logits_budget_bytes: int = LOGITS_BUDGET_BYTES) -> tuple[float, int]:
    """(sum of NLLs, scored tokens) of next-token prediction inside each row of `input_ids`.

    Every row is scored on positions 1..L-1 given its own prefix; rows never see each other.
    """
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"window_nll needs [windows, seq_len >= 2] token ids, got {tuple(input_ids.shape)}")
    base, head = _split_model(model)
    vocab = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", 1)
    rows = _chunk_rows(vocab, logits_budget_bytes)
    device = input_device(model)
    n = input_ids.shape[0]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = input_ids[start:start + batch_size].to(device)
                targets = batch[:, 1:]
                if base is not None:
                    hidden = base(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
                    total += _nll_from_hidden(hidden, targets, head, rows)
                else:  # a model we cannot split: full logits, still one batch at a time
                    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                    total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1).to(logits.device),
                                             reduction="sum").double().item()
                count += targets.numel()
                if progress is not None:
                    progress(min(start + batch_size, n), n, "perplexity")
    finally:
        model.train(was_training)
    return total, count


def perplexity(model, tokenizer, source: str = "wiki-bb", split: str | None = None, seq_len: int = 128,
               windows: int | None = None, batch_size: int = 8, progress=None) -> dict:
    """Paper-protocol perplexity of `model` on `source`'s `split` (None: the paper's split).

    `windows` limits the evaluation to the first N windows (quick interactive checks). Returns
    dataset, split, seq_len, windows, total_windows, tokens (scored next-token predictions:
    windows * (seq_len - 1)), tokens_in_windows, ppl, nll (mean per scored token), seconds,
    batch_size and a one-line `protocol` description.
    """
    split = split or paper_split(source)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    pw = perplexity_windows(tokenizer, source, split, seq_len=seq_len, limit=windows)
    t0 = time.perf_counter()
    total, count = window_nll(model, pw.input_ids, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    nll = total / count
    return {
        "dataset": pw.dataset,
        "split": pw.split,
        "seq_len": pw.seq_len,
        "windows": pw.windows,
        "total_windows": pw.total_windows,
        "tokens": count,
        "tokens_in_windows": pw.tokens,
        "ppl": math.exp(nll),
        "nll": nll,
        "seconds": round(seconds, 3),
        "batch_size": batch_size,
        "protocol": (f"non-overlapping {pw.seq_len}-token windows of the split's texts joined with '\\n\\n' "
                     f"(remainder dropped); each window scored on its {pw.seq_len - 1} next-token predictions; "
                     "PPL = exp(mean token NLL over all windows)"),
    }


__all__ = ["perplexity", "window_nll", "paper_split", "PAPER_SPLIT"]

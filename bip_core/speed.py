"""Size and speed of a model, measured: parameters, MACs per token, memory, prefill and decode throughput.

MACs (multiply-accumulates) per token are counted from the modules the model has now, so a pruned
model with per-layer shapes is counted exactly:

    linear    = sum over every nn.Linear (q, k, v, o, gate, up, down of each layer, and the LM head)
                of in_features * out_features                      (biases, norms, SiLU, RoPE and the
                                                                     embedding lookup are not counted)
    attention = sum over layers of 2 * num_heads_l * head_dim_l * context
                (q.k scores and the weighted sum of values, per query head, over `context` positions;
                 GQA shares k/v between heads but every query head still does both products)

`macs.per_token` is linear + attention at context = `prompt_len` (a token decoded after the prompt);
`macs.per_sequence` is the whole causal prefill of `prompt_len` tokens
(prompt_len * linear + attention summed over contexts 1..prompt_len).

Throughput is measured, not estimated: for each batch size, one warm-up run, then `repeats` runs of
(a) prefill: a forward pass over [batch, prompt_len] seeded random tokens that fills the KV cache,
with the LM head on the last position only (as in generation); (b) decode: `new_tokens` greedy steps
of one token per sequence with the cache. Reported: the median over repeats (and every time), as
tokens/s = batch * tokens / seconds. The number of torch threads is part of the result: timings
depend on it and on other load on the machine.
"""
from __future__ import annotations

import statistics
import time

import torch

from .architecture import count_params, input_device, model_geometry, unique_parameters
from .generation import cache_argument


def count_macs(model, context: int) -> dict:
    """MACs per token from the actual module shapes (see module docstring)."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    geometry = model_geometry(model)
    per_context_token = sum(2 * g.num_attention_heads * g.head_dim for g in geometry)
    attention = per_context_token * context
    per_sequence = context * linear + per_context_token * context * (context + 1) // 2
    return {
        "per_token": linear + attention,
        "per_token_linear": linear,
        "per_token_attention": attention,
        "attention_per_context_token": per_context_token,
        "context": context,
        "per_sequence": per_sequence,
        "formula": "sum(in*out of every Linear incl. LM head) + sum_l 2*heads_l*head_dim_l*context",
    }


def memory_bytes(model) -> dict:
    weights = sum(p.numel() * p.element_size() for p in unique_parameters(model))
    element = next(model.parameters()).element_size()
    kv_per_token = sum(2 * g.num_key_value_heads * g.head_dim for g in model_geometry(model)) * element
    return {"weight_bytes": weights, "kv_cache_bytes_per_token": kv_per_token,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


def _params(model) -> dict:
    counts = count_params(model)
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": counts["total"], "attention_mlp": counts["attention_mlp"], "embedding": embedding,
            "other": counts["total"] - counts["attention_mlp"] - embedding}


def _run_once(model, ids: torch.Tensor, new_tokens: int, cache_arg: str) -> tuple[float, float]:
    """(prefill seconds, decode seconds) for one batch of prompts."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens):
            out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_arg: cache})
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def measure_throughput(model, batch_size: int, prompt_len: int, new_tokens: int, repeats: int, warmup: int,
                       vocab: int, seed: int = 0) -> dict:
    device = input_device(model)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=generator).to(device)
    cache_arg = cache_argument(model)
    for _ in range(warmup):
        _run_once(model, ids, min(new_tokens, 2), cache_arg)
    runs = [_run_once(model, ids, new_tokens, cache_arg) for _ in range(repeats)]
    prefill = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    return {
        "batch_size": batch_size,
        "prefill_seconds": prefill,
        "prefill_tokens_per_s": batch_size * prompt_len / prefill,
        "decode_seconds": decode,
        "decode_tokens_per_s": batch_size * new_tokens / decode if new_tokens else None,
        "decode_ms_per_step": 1000 * decode / new_tokens if new_tokens else None,
        "prefill_times": [round(r[0], 5) for r in runs],
        "decode_times": [round(r[1], 5) for r in runs],
    }


def measure_speed(model, tokenizer=None, batch_sizes=(1, 8), prompt_len: int = 128, new_tokens: int = 32,
                  repeats: int = 3, warmup: int = 1, seed: int = 0, progress=None) -> dict:
    """Parameters, MACs, memory and measured prefill/decode throughput (see module docstring)."""
    if prompt_len < 1 or new_tokens < 0 or repeats < 1:
        raise ValueError(f"need prompt_len >= 1, new_tokens >= 0, repeats >= 1 (got {prompt_len}, {new_tokens}, {repeats})")
    vocab = min(model.config.vocab_size, len(tokenizer)) if tokenizer is not None else model.config.vocab_size
    was_training = model.training
    model.eval()
    throughput = []
    try:
        for i, batch_size in enumerate(batch_sizes):
            if progress is not None:
                progress(i, len(batch_sizes), f"speed: batch {batch_size}")
            throughput.append(measure_throughput(model, int(batch_size), prompt_len, new_tokens, repeats, warmup,
                                                 vocab, seed))
    finally:
        model.train(was_training)
    device = input_device(model)
    return {
        "params": _params(model),
        "macs": count_macs(model, prompt_len),
        "memory": memory_bytes(model),
        "throughput": throughput,
        "settings": {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup,
                     "statistic": "median", "torch_threads": torch.get_num_threads(),
                     "torch_interop_threads": torch.get_num_interop_threads(), "device": str(device)},
    }


def compare(dense: dict, pruned: dict) -> dict:
    """Pruned relative to dense, from two `measure_speed` results: size ratios and speed-ups (>1 = faster)."""
    def ratio(a, b):
        return a / b if a is not None and b else None

    speedups = []
    pruned_by_batch = {t["batch_size"]: t for t in pruned["throughput"]}
    for d in dense["throughput"]:
        p = pruned_by_batch.get(d["batch_size"])
        if p is None:
            continue
        speedups.append({"batch_size": d["batch_size"],
                         "prefill_speedup": ratio(p["prefill_tokens_per_s"], d["prefill_tokens_per_s"]),
                         "decode_speedup": ratio(p["decode_tokens_per_s"], d["decode_tokens_per_s"])})
    return {
        "params_ratio": ratio(pruned["params"]["total"], dense["params"]["total"]),
        "params_removed_fraction": 1 - pruned["params"]["total"] / dense["params"]["total"],
        "attention_mlp_removed_fraction": 1 - pruned["params"]["attention_mlp"] / dense["params"]["attention_mlp"],
        "macs_ratio": ratio(pruned["macs"]["per_token"], dense["macs"]["per_token"]),
        "weight_memory_ratio": ratio(pruned["memory"]["weight_bytes"], dense["memory"]["weight_bytes"]),
        "kv_cache_ratio": ratio(pruned["memory"]["kv_cache_bytes_per_token"], dense["memory"]["kv_cache_bytes_per_token"]),
        "speedups": speedups,
        "same_settings": dense["settings"] == pruned["settings"],
    }


__all__ = ["measure_speed", "compare", "count_macs", "memory_bytes", "measure_throughput"]

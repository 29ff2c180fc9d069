"""Streaming text generation, and the same prompt through two models side by side.

One manual decoding loop (KV cache, LM head only for the last position) instead of
`model.generate` in a thread: sampling draws from a private `torch.Generator` seeded with `seed`,
so the same model, prompt, seed and settings always give the same text, also when two models are
generated in turns for the side-by-side view. `temperature <= 0` is greedy decoding and matches
`model.generate(do_sample=False)`.

Sampling uses transformers' logits processors, in its order: repetition penalty (on the generated
tokens), temperature, top-k, top-p (nucleus: the smallest set of most likely tokens whose
probability reaches `top_p`).

Prompts: a string or a list of chat messages ({"role", "content"}). With a tokenizer that has a
chat template the messages (a string becomes one user message) go through it with the generation
prompt; otherwise the text is continued as is (messages are joined by newlines).
"""
from __future__ import annotations

import inspect
import time

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from .architecture import input_device

UNFINISHED_CHAR = "\ufffd"  # a multi-byte character cut in the middle: wait for its next token


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt_ids(tokenizer, prompt_or_messages, chat_template: bool | None = None) -> tuple[torch.Tensor, bool]:
    """(input ids [1, T], whether the chat template was used). `chat_template=None`: when available."""
    use_template = has_chat_template(tokenizer) if chat_template is None else bool(chat_template)
    if isinstance(prompt_or_messages, str):
        messages = [{"role": "user", "content": prompt_or_messages}]
        plain = prompt_or_messages
    else:
        messages = list(prompt_or_messages)
        plain = "\n".join(m["content"] for m in messages)
    if use_template:
        if not has_chat_template(tokenizer):
            raise ValueError("This tokenizer has no chat template; generate with chat_template=False.")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        if not plain:
            raise ValueError("The prompt is empty.")
        ids = tokenizer(plain, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ValueError("The prompt is empty.")
    return ids, use_template


def cache_argument(model) -> str:
    """transformers 5.x calls the KV cache argument `cache` (older versions: `past_key_values`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def stop_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update(source if isinstance(source, (list, tuple)) else [source])
    return ids


def logits_processors(temperature: float, top_p: float, top_k: int, repetition_penalty: float) -> LogitsProcessorList:
    """transformers' processors for these settings, in its order: repetition penalty, temperature, top-k,
    top-p (the sampling ones only when sampling, `temperature > 0`)."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature <= 0:
        return processors
    processors.append(TemperatureLogitsWarper(temperature))
    if top_k and top_k > 0:
        processors.append(TopKLogitsWarper(int(top_k)))
    if 0 < top_p < 1:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def next_token(logits: torch.Tensor, generated: list[int], temperature: float, top_p: float, top_k: int,
               repetition_penalty: float, generator: torch.Generator, processors: LogitsProcessorList | None = None) -> int:
    """Pick one token from the logits [vocab] of the last position (float32 on the CPU, seeded). The repetition
    penalty applies to the generated tokens (not the prompt's)."""
    if processors is None:
        processors = logits_processors(temperature, top_p, top_k, repetition_penalty)
    seen = torch.tensor([generated], dtype=torch.long)  # [1, n]: the tokens the penalty demotes
    scores = processors(seen, logits.float().cpu().clone()[None])[0]
    if temperature <= 0:
        return int(torch.argmax(scores))
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


class _Decoder:
    """One model's decoding state; `step()` adds one token and returns whether it is done."""

    def __init__(self, model, tokenizer, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float,
                 top_p: float, top_k: int, repetition_penalty: float, seed: int):
        self.model, self.tokenizer = model, tokenizer
        self.device = input_device(model)
        self.settings = (temperature, top_p, top_k, repetition_penalty)
        self.processors = logits_processors(*self.settings)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.stops = stop_token_ids(model, tokenizer)
        self.max_new_tokens = int(max_new_tokens)
        self.pending = prompt_ids.to(self.device)
        self.prompt_tokens = prompt_ids.shape[1]
        self.cache = None
        self.cache_argument = cache_argument(model)
        self.generated: list[int] = []
        self.done = max_new_tokens <= 0
        self.stop_reason = "length" if self.done else None
        self.text = ""
        self.seconds = 0.0

    def step(self) -> bool:
        if self.done:
            return True
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=self.pending, use_cache=True, logits_to_keep=1,
                             **{self.cache_argument: self.cache})
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = next_token(out.logits[0, -1], self.generated, *self.settings, generator=self.generator,
                           processors=self.processors)
        if token in self.stops:
            self.done, self.stop_reason = True, "eos"
        else:
            self.generated.append(token)
            self.pending = torch.tensor([[token]], device=self.device)
            text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
            if not text.endswith(UNFINISHED_CHAR):
                self.text = text
            if len(self.generated) >= self.max_new_tokens:
                self.done, self.stop_reason = True, "length"
        self.seconds += time.perf_counter() - t0
        if self.done:
            self.text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        return self.done

    def stats(self) -> dict:
        n = len(self.generated)
        return {"text": self.text, "new_tokens": n, "prompt_tokens": self.prompt_tokens, "seconds": self.seconds,
                "tokens_per_second": n / self.seconds if self.seconds > 0 else None, "stop_reason": self.stop_reason}


def _decoder(model, tokenizer, prompt_or_messages, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
             seed, chat_template):
    ids, used = build_prompt_ids(tokenizer, prompt_or_messages, chat_template)
    if getattr(model, "training", False):
        model.eval()
    return _Decoder(model, tokenizer, ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed), used


def stream_generate(model, tokenizer, prompt_or_messages, max_new_tokens: int = 64, temperature: float = 0.7,
                    top_p: float = 0.9, seed: int = 0, top_k: int = 0, repetition_penalty: float = 1.0,
                    chat_template: bool | None = None):
    """Yield the generated text (the whole text so far, growing) after every new token."""
    decoder, _ = _decoder(model, tokenizer, prompt_or_messages, max_new_tokens, temperature, top_p, top_k,
                          repetition_penalty, seed, chat_template)
    last = None
    while not decoder.done:
        decoder.step()
        if decoder.text != last:
            last = decoder.text
            yield last


stream_chat = stream_generate  # the name in docs/CONTRACTS.md


def stream_generate_stats(model, tokenizer, prompt_or_messages, max_new_tokens: int = 64, temperature: float = 0.7,
                          top_p: float = 0.9, seed: int = 0, top_k: int = 0, repetition_penalty: float = 1.0,
                          chat_template: bool | None = None):
    """Like `stream_generate`, but yields {text, new_tokens, prompt_tokens, seconds, tokens_per_second,
    stop_reason, done} after every new token (token counts as generated, not re-tokenized text)."""
    decoder, _ = _decoder(model, tokenizer, prompt_or_messages, max_new_tokens, temperature, top_p, top_k,
                          repetition_penalty, seed, chat_template)
    while not decoder.done:
        decoder.step()
        yield {**decoder.stats(), "done": decoder.done}


def generate(model, tokenizer, prompt_or_messages, max_new_tokens: int = 64, temperature: float = 0.7,
             top_p: float = 0.9, seed: int = 0, top_k: int = 0, repetition_penalty: float = 1.0,
             chat_template: bool | None = None) -> dict:
    """Non-streaming: {text, new_tokens, prompt_tokens, seconds, tokens_per_second, stop_reason, chat_template}."""
    decoder, used = _decoder(model, tokenizer, prompt_or_messages, max_new_tokens, temperature, top_p, top_k,
                             repetition_penalty, seed, chat_template)
    while not decoder.step():
        pass
    return {**decoder.stats(), "chat_template": used}


def stream_side_by_side(models: dict, tokenizer, prompt_or_messages, max_new_tokens: int = 64,
                        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, top_k: int = 0,
                        repetition_penalty: float = 1.0, chat_template: bool | None = None):
    """The same prompt through several models (e.g. {"original": m, "pruned": p}) with identical settings.

    Each model gets its own generator seeded with `seed`, and they take turns one token at a time,
    so both columns grow together. Yields {name: {"text", "new_tokens", "seconds",
    "tokens_per_second", "done", "stop_reason", ...}} after every round. `tokenizer` is one
    tokenizer for all, or a dict with one per model.
    """
    decoders = {}
    for name, model in models.items():
        tok = tokenizer[name] if isinstance(tokenizer, dict) else tokenizer
        decoders[name], _ = _decoder(model, tok, prompt_or_messages, max_new_tokens, temperature, top_p, top_k,
                                     repetition_penalty, seed, chat_template)
    while True:
        for decoder in decoders.values():
            decoder.step()
        yield {name: {**d.stats(), "done": d.done} for name, d in decoders.items()}
        if all(d.done for d in decoders.values()):
            return


__all__ = ["stream_generate", "stream_chat", "stream_generate_stats", "generate", "stream_side_by_side",
           "build_prompt_ids", "cache_argument", "has_chat_template", "next_token", "logits_processors"]

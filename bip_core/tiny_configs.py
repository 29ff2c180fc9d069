"""Small random-weight configs of every supported family, for tests and teaching.

`tiny_config("qwen3", gqa=True)` returns a transformers config; save it alone in a folder
(`config.save_pretrained(folder)`) and `load_model(folder)` gives a random model (seed 0) with the
default tokenizer. The vocabulary matches the default tokenizer so any text can be fed.
"""
from __future__ import annotations

from .architecture import SUPPORTED_FAMILIES

DEFAULT_VOCAB = 49152


def tiny_config(family: str = "llama", gqa: bool = True, layers: int = 3, hidden: int = 64,
                heads: int = 4, intermediate: int = 96, vocab: int = DEFAULT_VOCAB):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    kv_heads = heads // 2 if gqa else heads
    common = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                  max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family == "llama":
        return LlamaConfig(**common, head_dim=hidden // heads, architectures=["LlamaForCausalLM"])
    if family == "mistral":
        return MistralConfig(**common, head_dim=hidden // heads, sliding_window=None,
                             architectures=["MistralForCausalLM"])
    if family == "qwen2":  # q/k/v biases
        return Qwen2Config(**common, architectures=["Qwen2ForCausalLM"])
    if family == "qwen3":  # q_norm/k_norm; explicit head_dim different from hidden/heads
        return Qwen3Config(**common, head_dim=2 * hidden // heads, architectures=["Qwen3ForCausalLM"])
    raise ValueError(f"no tiny config for family '{family}'")


FAMILIES = SUPPORTED_FAMILIES

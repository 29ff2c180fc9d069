"""Modeling code for LLaMA-family models pruned by BIP Studio (layers of different sizes).

This file is shipped inside every export folder, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

works on a machine without BIP Studio. It imports only torch and transformers (never bip_core).

A pruned model is the family's own model whose decoder layers have their own sizes. config.json
lists them under `bip_layer_shapes`, one entry per layer:

    {"num_heads": 6, "num_kv_heads": 2, "head_dim": 64, "intermediate": 1024,
     "o_proj_bias": true, "down_proj_bias": false}

Each *ForCausalLM below first builds the model from the config's standard fields, then resizes the
Linear modules of every layer to its entry (before the weights are loaded), and fixes the module
attributes the forward pass reads (`num_key_value_groups`, `intermediate_size`). The o_proj /
down_proj biases hold FLAP-style bias compensation. A layer with no attention head left gets an
`EmptyAttention` that adds only the o_proj bias.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

LAYER_SHAPES_KEY = "bip_layer_shapes"


def _linear(in_features: int, out_features: int, bias: bool, like: nn.Linear, device=None) -> nn.Linear:
    with warnings.catch_warnings():  # zero-size Linears (pruned-away attention) warn that init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features, bias=bias, device=device or like.weight.device,
                         dtype=like.weight.dtype)


class EmptyAttention(nn.Module):
    """The attention sub-block of a layer whose every head was pruned: its output is the o_proj bias.

    q/k/v/o_proj stay as zero-size Linear modules so that code reading shapes finds 0 heads. The KV
    cache gets a one-number placeholder per token so that its length bookkeeping stays right.
    """

    def __init__(self, hidden: int, head_dim: int, layer_idx: int, o_bias: bool, like: nn.Linear, device=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.num_key_value_groups = 0
        self.q_proj = _linear(hidden, 0, False, like, device)
        self.k_proj = _linear(hidden, 0, False, like, device)
        self.v_proj = _linear(hidden, 0, False, like, device)
        self.o_proj = _linear(0, hidden, o_bias, like, device)

    def forward(self, hidden_states: torch.Tensor, cache=None, past_key_values=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape  # [B, T, hidden]
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            placeholder = hidden_states.new_zeros(batch, 1, seq_len, 1)  # [B, 1, T, 1]
            cache.update(placeholder, placeholder, self.layer_idx)
        return self.o_proj(hidden_states.new_zeros(batch, seq_len, 0)), None  # [B, T, hidden]: bias or zeros


def resize_layer(layer: nn.Module, shape: dict, device=None) -> None:
    """Give decoder `layer` the sizes in `shape` (new, uninitialised Linear modules; weights come later)."""
    attn, mlp = layer.self_attn, layer.mlp
    hidden, head_dim = attn.q_proj.in_features, shape["head_dim"]
    heads, kv_heads, intermediate = shape["num_heads"], shape["num_kv_heads"], shape["intermediate"]
    o_bias = bool(shape.get("o_proj_bias")) or attn.o_proj.bias is not None
    if heads == 0:
        layer.self_attn = EmptyAttention(hidden, head_dim, attn.layer_idx, o_bias, attn.o_proj, device)
    else:
        attn.q_proj = _linear(hidden, heads * head_dim, attn.q_proj.bias is not None, attn.q_proj, device)
        attn.k_proj = _linear(hidden, kv_heads * head_dim, attn.k_proj.bias is not None, attn.k_proj, device)
        attn.v_proj = _linear(hidden, kv_heads * head_dim, attn.v_proj.bias is not None, attn.v_proj, device)
        attn.o_proj = _linear(heads * head_dim, hidden, o_bias, attn.o_proj, device)
        attn.num_key_value_groups = heads // kv_heads
    down_bias = bool(shape.get("down_proj_bias")) or mlp.down_proj.bias is not None
    mlp.gate_proj = _linear(hidden, intermediate, mlp.gate_proj.bias is not None, mlp.gate_proj, device)
    mlp.up_proj = _linear(hidden, intermediate, mlp.up_proj.bias is not None, mlp.up_proj, device)
    mlp.down_proj = _linear(intermediate, hidden, down_bias, mlp.down_proj, device)
    mlp.intermediate_size = intermediate


def apply_layer_shapes(model: nn.Module, shapes: list[dict], device=None) -> None:
    layers = model.model.layers
    if len(shapes) != len(layers):
        raise ValueError(f"{LAYER_SHAPES_KEY} lists {len(shapes)} layers; the model has {len(layers)}")
    for layer, shape in zip(layers, shapes):
        resize_layer(layer, shape, device)


class BipPrunedMixin:
    """Resizes every decoder layer to `config.bip_layer_shapes` right after the family builds it."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        shapes = getattr(config, LAYER_SHAPES_KEY, None)
        if shapes:
            apply_layer_shapes(self, shapes)


class BipLlamaForCausalLM(BipPrunedMixin, LlamaForCausalLM):
    pass


class BipMistralForCausalLM(BipPrunedMixin, MistralForCausalLM):
    pass


class BipQwen2ForCausalLM(BipPrunedMixin, Qwen2ForCausalLM):
    pass


class BipQwen3ForCausalLM(BipPrunedMixin, Qwen3ForCausalLM):
    pass


PRUNED_CLASSES = {"llama": BipLlamaForCausalLM, "mistral": BipMistralForCausalLM,
                  "qwen2": BipQwen2ForCausalLM, "qwen3": BipQwen3ForCausalLM}

"""Apply a plan: a physically smaller dense model, or the same model with the pruned units masked.

METHOD.md section 3. For each layer, with Q the kept query heads and K the kept KV heads (the
plan's units are whole KV groups, whole query slots or MHA heads, so the GQA layout stays valid):

    q_proj.weight [heads*hd, hidden]    -> rows of Q           (and q_proj.bias, Qwen2)
    k_proj / v_proj [kv*hd, hidden]     -> rows of K           (and their biases)
    o_proj.weight [hidden, heads*hd]    -> columns of Q
    gate_proj / up_proj [inter, hidden] -> rows of the kept channels
    down_proj.weight [hidden, inter]    -> columns of the kept channels
    attn.num_key_value_groups = |Q| / |K|;   Qwen3 q_norm / k_norm act per head_dim and stay.

The original model is never modified (its weights stay bit-identical), so it can be pruned again
with another plan. The pruned model's config gets `bip_layer_shapes` (one entry per layer, see
modeling_bip_pruned.py), an explicit `head_dim`, and the standard head/width fields when every
layer has the same shape. A layer whose attention units were all removed gets an EmptyAttention.

FLAP-style bias compensation: removing columns P of W (o_proj or down_proj) changes its output by
-W[:, P] x_P; its mean over the calibration tokens is put back as a bias, b = W[:, P] @ mean(x_P),
using the scores' `o_input_mean` / `down_input_mean`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .architecture import block_parts, decoder_layers
from .errors import PlanError
from .modeling_bip_pruned import LAYER_SHAPES_KEY, resize_layer
from .plan import Plan, scores_parts

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_PATHS = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                "down_proj": "mlp.down_proj"}


def _rows(heads: list[int], head_dim: int) -> list[int]:
    """Rows (of q/k/v_proj) or columns (of o_proj) that belong to `heads`."""
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def _kept_columns(plan: Plan, i: int, head_dim: int) -> tuple[list[int], list[int], list[int]]:
    """(q/o head dims kept, k/v head dims kept, MLP channels kept) of layer i."""
    q_heads, kv_heads = plan.kept_heads(i)
    return _rows(q_heads, head_dim), _rows(kv_heads, head_dim), plan.layers[i]["mlp"]


def compensation_biases(model, plan: Plan, scores) -> list[dict]:
    """Per layer {"o_proj": bias or None, "down_proj": bias or None}: b = W[:, pruned] @ mean input (float32)."""
    if scores is None:
        raise PlanError("Bias compensation needs the scores the plan came from (scores=...): they hold the mean "
                        "inputs of o_proj and down_proj.")
    layers, _ = scores_parts(scores)
    biases = []
    for i, geom in enumerate(plan.geometry()):
        parts = block_parts(model, i)
        q_cols, _, channels = _kept_columns(plan, i, geom.head_dim)
        entry = {}
        for name, key, kept, width in (("o_proj", "o_input_mean", q_cols, geom.num_heads * geom.head_dim),
                                       ("down_proj", "down_input_mean", channels, geom.intermediate)):
            pruned = sorted(set(range(width)) - set(kept))
            if not pruned:
                entry[name] = None
                continue
            mean = layers[i].get(key)
            if mean is None or len(mean) != width:
                raise PlanError(
                    f"Bias compensation needs '{key}' (length {width}) in layer {i} of the scores; these scores "
                    f"{'lack it' if mean is None else f'have length {len(mean)}'}. Score with a method that records "
                    f"mean inputs (bip, flap), or prune without bias compensation.")
            weight = getattr(parts, name).weight
            idx = torch.tensor(pruned, device=weight.device)
            mean = torch.as_tensor(mean, dtype=torch.float32, device=weight.device)[idx]  # [|P|]
            entry[name] = (weight.detach().float()[:, idx] @ mean).to(weight.dtype)        # [hidden]
        biases.append(entry)
    return biases


def _sliced_weights(model, plan: Plan, i: int, compensation: dict | None) -> dict[str, torch.Tensor]:
    """New tensors (copies) of layer i's pruned Linear weights and biases, keyed 'q_proj.weight' etc."""
    parts = block_parts(model, i)
    q_cols, kv_rows, channels = _kept_columns(plan, i, plan.geometry()[i].head_dim)
    keep = {"q_proj": (0, q_cols), "k_proj": (0, kv_rows), "v_proj": (0, kv_rows), "o_proj": (1, q_cols),
            "gate_proj": (0, channels), "up_proj": (0, channels), "down_proj": (1, channels)}
    out = {}
    for name, (dim, idx) in keep.items():
        lin = getattr(parts, name)
        index = torch.tensor(idx, dtype=torch.long, device=lin.weight.device)
        out[f"{name}.weight"] = lin.weight.detach().index_select(dim, index)
        if lin.bias is not None:  # a row-wise bias follows its rows; o/down biases are per output and stay
            out[f"{name}.bias"] = lin.bias.detach().index_select(0, index) if dim == 0 else lin.bias.detach().clone()
    for name, bias in (compensation or {}).items():
        if bias is not None:
            out[f"{name}.bias"] = out[f"{name}.bias"] + bias if f"{name}.bias" in out else bias.clone()
    return out


def _copy_without(model, params) -> nn.Module:
    """A deep copy of `model` in which `params` become empty placeholders (their copy would be wasted)."""
    memo = {id(p): nn.Parameter(torch.empty(0, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
            for p in params}
    return copy.deepcopy(model, memo)


def prune_model(model, plan: Plan, bias_compensation: bool = False, scores=None) -> nn.Module:
    """A new, physically smaller model with the units the plan removes sliced out; `model` is untouched."""
    plan.check_matches(model)
    n_layers = len(decoder_layers(model))
    compensation = compensation_biases(model, plan, scores) if bias_compensation else [None] * n_layers
    weights = [_sliced_weights(model, plan, i, compensation[i]) for i in range(n_layers)]
    replaced = [p for i in range(n_layers) for name in LINEARS for p in getattr(block_parts(model, i), name).parameters()]
    pruned = _copy_without(model, replaced)

    shapes = plan.pruned_shapes()
    for i, (layer, shape, tensors) in enumerate(zip(decoder_layers(pruned), shapes, weights)):
        shape["o_proj_bias"] = "o_proj.bias" in tensors
        shape["down_proj_bias"] = "down_proj.bias" in tensors
        requires_grad = block_parts(model, i).q_proj.weight.requires_grad
        resize_layer(layer, shape, device="meta")
        for key, tensor in tensors.items():
            module_name, param_name = key.rsplit(".", 1)
            module = layer.get_submodule(MODULE_PATHS[module_name])
            setattr(module, param_name, nn.Parameter(tensor.contiguous(), requires_grad=requires_grad))
    _record_shapes(pruned.config, shapes)
    pruned.config.bip_bias_compensation = bool(bias_compensation)
    return pruned


def _record_shapes(config, shapes: list[dict]) -> None:
    """Per-layer shapes into the config; the standard fields too when every layer has the same shape."""
    setattr(config, LAYER_SHAPES_KEY, shapes)
    config.head_dim = shapes[0]["head_dim"]
    first = {k: shapes[0][k] for k in ("num_heads", "num_kv_heads", "intermediate")}
    if first["num_heads"] > 0 and all({k: s[k] for k in first} == first for s in shapes):
        config.num_attention_heads = first["num_heads"]
        config.num_key_value_heads = first["num_kv_heads"]
        config.intermediate_size = first["intermediate"]


def mask_model(model, plan: Plan, bias_compensation: bool = False, scores=None) -> nn.Module:
    """A copy of `model` with the plan's removed units zeroed (o_proj / down_proj columns); same logits as
    `prune_model(model, plan, ...)` up to float rounding. For equivalence tests and teaching."""
    plan.check_matches(model)
    n_layers = len(decoder_layers(model))
    compensation = compensation_biases(model, plan, scores) if bias_compensation else [None] * n_layers
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i, geom in enumerate(plan.geometry()):
            parts = block_parts(masked, i)
            q_cols, _, channels = _kept_columns(plan, i, geom.head_dim)
            for lin, kept, width, name in ((parts.o_proj, q_cols, geom.num_heads * geom.head_dim, "o_proj"),
                                           (parts.down_proj, channels, geom.intermediate, "down_proj")):
                pruned = sorted(set(range(width)) - set(kept))
                lin.weight[:, torch.tensor(pruned, dtype=torch.long, device=lin.weight.device)] = 0
                bias = (compensation[i] or {}).get(name)
                if bias is not None:
                    if lin.bias is None:
                        lin.bias = nn.Parameter(torch.zeros_like(bias), requires_grad=lin.weight.requires_grad)
                    lin.bias += bias
    return masked


__all__ = ["prune_model", "mask_model", "compensation_biases"]

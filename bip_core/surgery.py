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

from .architecture import LINEARS, LayerGeometry, block_parts, decoder_layers, linear_path
from .errors import PlanError
from .modeling_bip_pruned import LAYER_SHAPES_KEY, resize_layer
from .plan import Plan, scores_parts
from .scoring.units import head_channels

# Linear -> the scores' mean input used to compensate its pruned columns
COMPENSATED = {"o_proj": "o_input_mean", "down_proj": "down_input_mean"}


def kept_indices(plan: Plan, i: int) -> dict[str, tuple[int, list[int]]]:
    """Layer i's Linear name -> (dimension that is sliced, kept indices): rows of q/k/v/gate/up_proj,
    columns of o/down_proj."""
    geom = plan.geometry()[i]
    q_heads, kv_heads = plan.kept_heads(i, geom)
    q_cols, kv_rows = head_channels(q_heads, geom.head_dim), head_channels(kv_heads, geom.head_dim)
    channels = plan.layers[i]["mlp"]
    return {"q_proj": (0, q_cols), "k_proj": (0, kv_rows), "v_proj": (0, kv_rows), "o_proj": (1, q_cols),
            "gate_proj": (0, channels), "up_proj": (0, channels), "down_proj": (1, channels)}


def _input_width(geom: LayerGeometry, name: str) -> int:
    return geom.num_attention_heads * geom.head_dim if name == "o_proj" else geom.intermediate_size


def compensated(plan: Plan, i: int, name: str) -> bool:
    """Whether bias compensation gives layer i's `name` (o_proj or down_proj) a bias: some column is pruned."""
    return len(kept_indices(plan, i)[name][1]) < _input_width(plan.geometry()[i], name)


def compensation_inputs(plan: Plan, scores) -> list[dict]:
    """Per layer {"o_proj": mean input or None, "down_proj": ...} from the scores (None where no column is
    pruned); raises PlanError when the scores lack them."""
    if scores is None:
        raise PlanError("Bias compensation needs the scores the plan came from (scores=...): they hold the mean "
                        "inputs of o_proj and down_proj.")
    layers, _ = scores_parts(scores)
    means = []
    for i, geom in enumerate(plan.geometry()):
        entry = {}
        for name, key in COMPENSATED.items():
            width, mean = _input_width(geom, name), layers[i].get(key)
            if not compensated(plan, i, name):
                entry[name] = None
            elif mean is None or len(mean) != width:
                raise PlanError(
                    f"Bias compensation needs '{key}' (length {width}) in layer {i} of the scores; these scores "
                    f"{'lack it' if mean is None else f'have length {len(mean)}'}. Score with a method that records "
                    f"mean inputs (bip, flap), or prune without bias compensation.")
            else:
                entry[name] = mean
        means.append(entry)
    return means


def compensation_bias(weight: torch.Tensor, kept: list[int], mean_input) -> torch.Tensor | None:
    """b = W[:, P] @ mean_input[P] over the pruned columns P of `weight` (float32 math, W's dtype);
    None when no column is pruned."""
    pruned = sorted(set(range(weight.shape[1])) - set(kept))
    if not pruned:
        return None
    idx = torch.tensor(pruned, dtype=torch.long, device=weight.device)
    mean = torch.as_tensor(mean_input, dtype=torch.float32, device=weight.device)[idx]  # [|P|]
    return (weight.detach()[:, idx].float() @ mean).to(weight.dtype)                     # [hidden]


def compensation_biases(model, plan: Plan, scores) -> list[dict]:
    """Per layer {"o_proj": bias or None, "down_proj": bias or None} of `model` (see compensation_bias)."""
    biases = []
    for i, means in enumerate(compensation_inputs(plan, scores)):
        kept, parts = kept_indices(plan, i), block_parts(model, i)
        biases.append({name: None if mean is None else compensation_bias(getattr(parts, name).weight,
                                                                         kept[name][1], mean)
                       for name, mean in means.items()})
    return biases


def pruned_tensor(tensor: torch.Tensor | None, param: str, dim: int, index: torch.Tensor,
                  compensation: torch.Tensor | None = None) -> torch.Tensor | None:
    """A Linear's pruned weight or bias (a new tensor): a weight keeps `index` along `dim`; a bias follows its
    rows when rows are sliced and stays whole when columns are (plus the compensation bias, if any)."""
    if param == "weight":
        return tensor.index_select(dim, index)
    bias = None if tensor is None else (tensor.index_select(0, index) if dim == 0 else tensor.clone())
    if compensation is None:
        return bias
    return compensation.clone() if bias is None else bias + compensation


def _sliced_weights(model, plan: Plan, i: int, compensation: dict | None,
                    refit: dict | None = None) -> dict[str, torch.Tensor]:
    """New tensors of layer i's pruned Linear weights and biases, keyed 'q_proj.weight' etc.; `refit`
    ({"o_proj": (kept columns, bias), ...}, bip_core.sequential) replaces o_proj's / down_proj's."""
    parts = block_parts(model, i)
    out = {}
    for name, (dim, kept) in kept_indices(plan, i).items():
        lin = getattr(parts, name)
        index = torch.tensor(kept, dtype=torch.long, device=lin.weight.device)
        out[f"{name}.weight"] = pruned_tensor(lin.weight.detach(), "weight", dim, index)
        bias = lin.bias.detach() if lin.bias is not None else None
        bias = pruned_tensor(bias, "bias", dim, index, (compensation or {}).get(name))
        if bias is not None:
            out[f"{name}.bias"] = bias
    for name, (weight, bias) in (refit or {}).items():
        like = getattr(parts, name).weight
        out[f"{name}.weight"] = weight.to(device=like.device, dtype=like.dtype)
        if bias is not None:
            out[f"{name}.bias"] = bias.to(device=like.device, dtype=like.dtype)
    return out


def _copy_without(model, params) -> nn.Module:
    """A deep copy of `model` in which `params` become empty placeholders (their copy would be wasted)."""
    memo = {id(p): nn.Parameter(torch.empty(0, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
            for p in params}
    return copy.deepcopy(model, memo)


def prune_model(model, plan: Plan, bias_compensation: bool = False, scores=None, refit=None) -> nn.Module:
    """A new, physically smaller model with the units the plan removes sliced out; `model` is untouched.
    refit: per layer the refit kept columns and biases of o_proj / down_proj (bip_core.sequential)."""
    plan.check_matches(model)
    n_layers = len(decoder_layers(model))
    compensation = compensation_biases(model, plan, scores) if bias_compensation else [None] * n_layers
    refit = refit if refit is not None else [None] * n_layers
    weights = [_sliced_weights(model, plan, i, compensation[i], refit[i]) for i in range(n_layers)]
    replaced = [p for i in range(n_layers) for name in LINEARS
                for p in getattr(block_parts(model, i), name).parameters()]
    pruned = _copy_without(model, replaced)

    shapes = plan.pruned_shapes()
    for i, (layer, shape, tensors) in enumerate(zip(decoder_layers(pruned), shapes, weights)):
        shape["o_proj_bias"] = "o_proj.bias" in tensors
        shape["down_proj_bias"] = "down_proj.bias" in tensors
        requires_grad = block_parts(model, i).q_proj.weight.requires_grad
        resize_layer(layer, shape, device="meta")
        for key, tensor in tensors.items():
            module_name, param_name = key.rsplit(".", 1)
            module = layer.get_submodule(linear_path(module_name))
            if getattr(module, param_name) is None:  # the q/k/v biases of a layer left without attention
                continue
            setattr(module, param_name, nn.Parameter(tensor.contiguous(), requires_grad=requires_grad))
    record_pruned_shapes(pruned.config, shapes, bias_compensation or refit[0] is not None)
    return pruned


def record_pruned_shapes(config, shapes: list[dict], bias_compensation: bool) -> None:
    """Per-layer shapes into the (pruned model's) config; the standard fields too when every layer has the
    same shape."""
    setattr(config, LAYER_SHAPES_KEY, shapes)
    config.bip_bias_compensation = bool(bias_compensation)
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
        for i in range(n_layers):
            parts, kept = block_parts(masked, i), kept_indices(plan, i)
            for name in COMPENSATED:  # the Linears whose input columns are removed
                lin = getattr(parts, name)
                pruned = sorted(set(range(lin.in_features)) - set(kept[name][1]))
                lin.weight[:, torch.tensor(pruned, dtype=torch.long, device=lin.weight.device)] = 0
                bias = (compensation[i] or {}).get(name)
                if bias is not None:
                    if lin.bias is None:
                        lin.bias = nn.Parameter(torch.zeros_like(bias), requires_grad=lin.weight.requires_grad)
                    lin.bias += bias
    return masked


__all__ = ["prune_model", "mask_model", "compensation_biases", "compensation_bias", "compensation_inputs",
           "kept_indices", "pruned_tensor", "record_pruned_shapes"]

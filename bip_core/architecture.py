"""The one place that knows where things are inside a LLaMA-family decoder.

Supported: Llama (and SmolLM / SmolLM2, which are Llama), Mistral, Qwen2 (q/k/v biases) and Qwen3
(q_norm / k_norm, explicit head_dim). All share the pre-norm block of METHOD.md section 2:

    u = input_layernorm(x);  z_k = head k of attention(u);  h = x + o_proj(z)
    v = post_attention_layernorm(h);  m = silu(gate_proj(v)) * up_proj(v);  y = h + down_proj(m)

Geometry is read from the modules of each layer, never assumed, so a pruned model whose layers
have different head counts or widths is described correctly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from .errors import UnsupportedArchitectureError

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
FAMILY_NOTES = "Llama (incl. SmolLM/SmolLM2), Mistral, Qwen2, Qwen3"
UNIT_KINDS = ("head", "kv_group", "query_slot")
# The Linear layers of a decoder block, by their module names in every supported family.
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTENTION_LINEARS + MLP_LINEARS


def linear_path(name: str) -> str:
    """Module path of a Linear inside a decoder layer: 'q_proj' -> 'self_attn.q_proj'."""
    if name in ATTENTION_LINEARS:
        return f"self_attn.{name}"
    if name in MLP_LINEARS:
        return f"mlp.{name}"
    raise ValueError(f"'{name}' is not one of the block's Linear layers {LINEARS}")


def linear_name(layer: int, name: str, param: str = "weight") -> str:
    """State-dict name of a block Linear's parameter: (3, 'q_proj') -> 'model.layers.3.self_attn.q_proj.weight'."""
    return f"model.layers.{layer}.{linear_path(name)}.{param}"


_LINEAR_NAME = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.(weight|bias)")


def parse_linear_name(state_name: str) -> tuple[int, str, str] | None:
    """(layer, Linear name, 'weight' or 'bias') of a block Linear's state-dict name; None for anything else."""
    match = _LINEAR_NAME.fullmatch(state_name)
    if match is None:
        return None
    layer, name, param = int(match.group(1)), match.group(2), match.group(3)
    if name not in LINEARS or linear_name(layer, name, param) != state_name:  # e.g. mlp.q_proj
        return None
    return layer, name, param


def family_of(config) -> str:
    """The family name from a transformers config; raises a clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED_FAMILIES:
        return model_type
    raise UnsupportedArchitectureError(
        f"Architecture '{model_type}' is not supported. BIP Studio scores and prunes LLaMA-family "
        f"decoders: {FAMILY_NOTES}. Pick a model of one of these families."
    )


@dataclass
class BlockParts:
    """The modules of one decoder block, under the names METHOD.md uses."""

    layer: nn.Module
    input_norm: nn.Module  # RMSNorm1
    attn: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    post_norm: nn.Module  # RMSNorm2
    mlp: nn.Module
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    q_norm: nn.Module | None = None  # Qwen3
    k_norm: nn.Module | None = None  # Qwen3


@dataclass(frozen=True)
class LayerGeometry:
    """Head layout and widths of one block, as its weights have them now, under the HF config's names."""

    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int

    @property
    def n_rep(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads if self.num_key_value_heads else 0  # 0: attention pruned away

    def num_units(self, unit: str) -> int:
        if unit == "kv_group" or unit == "head":
            return self.num_key_value_heads if unit == "kv_group" else self.num_attention_heads
        if unit == "query_slot":
            return self.n_rep
        raise ValueError(f"unknown attention unit '{unit}'; choose one of {UNIT_KINDS}")

    def unit_heads(self, unit: str, index: int) -> tuple[list[int], list[int]]:
        """(query heads, kv heads) that attention unit `index` consists of."""
        r = self.n_rep
        if unit == "head":
            if r != 1:
                raise ValueError("unit 'head' is for MHA models; this layer is GQA: use kv_group or query_slot")
            return [index], [index]
        if unit == "kv_group":
            return list(range(index * r, (index + 1) * r)), [index]
        if unit == "query_slot":
            return [g * r + index for g in range(self.num_key_value_heads)], []
        raise ValueError(f"unknown attention unit '{unit}'; choose one of {UNIT_KINDS}")

    def to_record(self) -> dict:
        """The serialized record (scores and plan files), in the HF config's names."""
        return {"num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim, "intermediate_size": self.intermediate_size, "hidden_size": self.hidden_size}

    @classmethod
    def from_record(cls, record: dict) -> "LayerGeometry":
        """From `to_record()`'s dict, or from the older records (scores format 1, plan version 1)."""
        names = next((n for n in RECORD_NAMES if n[0] in record), RECORD_NAMES[0])
        return cls(*(record[name] for name in names))


# the record's names, then older ones that files may still hold: scores format 1, plan version 1
RECORD_NAMES = (("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "hidden_size"),
                ("heads", "kv_heads", "head_dim", "intermediate", "hidden"),
                ("num_heads", "num_kv_heads", "head_dim", "intermediate", "hidden"))


def geometry_record(geometries: list[LayerGeometry]) -> list[dict]:
    return [g.to_record() for g in geometries]


def geometry_from_record(record: list[dict]) -> list[LayerGeometry]:
    return [LayerGeometry.from_record(g) for g in record]


def default_unit(geometry: LayerGeometry) -> str:
    return "head" if geometry.n_rep == 1 else "kv_group"


def input_device(model):
    """Where the model's inputs go: its embeddings' device (the CPU when accelerate offloaded them to "meta":
    accelerate's hooks then move the inputs)."""
    import torch

    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def decoder_layers(model) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    return inner.layers


def block_parts(model, index: int) -> BlockParts:
    layer = decoder_layers(model)[index]
    attn, mlp = layer.self_attn, layer.mlp
    return BlockParts(
        layer=layer,
        input_norm=layer.input_layernorm,
        attn=attn,
        q_proj=attn.q_proj,
        k_proj=attn.k_proj,
        v_proj=attn.v_proj,
        o_proj=attn.o_proj,
        post_norm=layer.post_attention_layernorm,
        mlp=mlp,
        gate_proj=mlp.gate_proj,
        up_proj=mlp.up_proj,
        down_proj=mlp.down_proj,
        q_norm=getattr(attn, "q_norm", None),
        k_norm=getattr(attn, "k_norm", None),
    )


def layer_geometry(model, index: int) -> LayerGeometry:
    parts = block_parts(model, index)
    head_dim = parts.attn.head_dim
    return LayerGeometry(
        num_attention_heads=parts.q_proj.out_features // head_dim,
        num_key_value_heads=parts.k_proj.out_features // head_dim,
        head_dim=head_dim,
        intermediate_size=parts.gate_proj.out_features,
        hidden_size=parts.q_proj.in_features,
    )


def model_geometry(model) -> list[LayerGeometry]:
    return [layer_geometry(model, i) for i in range(len(decoder_layers(model)))]


def describe_geometry(geometries: list[LayerGeometry]) -> str:
    """'30 layers, 9 heads / 3 kv heads x 64, intermediate 1536, hidden 576' (or 'mixed widths')."""
    first = geometries[0] if geometries else None
    shape = (f"{first.num_attention_heads} heads / {first.num_key_value_heads} kv heads x {first.head_dim}, intermediate "
             f"{first.intermediate_size}, hidden {first.hidden_size}") if all(g == first for g in geometries) else "mixed widths"
    return f"{len(geometries)} layers, {shape}"


def check_geometry(recorded: list[LayerGeometry], model, error: type[Exception], what: str, remedy: str) -> None:
    """Raise `error` unless `model` has exactly the per-layer geometry `recorded` (what a scores file or
    a plan was made for). `what` names the artifact ("This plan was"), `remedy` says what to do."""
    theirs = model_geometry(model)
    if list(recorded) == theirs:
        return
    where = next((i for i, (a, b) in enumerate(zip(recorded, theirs)) if a != b), min(len(recorded), len(theirs)))
    raise error(f"{what} made for another model geometry ({describe_geometry(recorded)}); this model has "
                f"{describe_geometry(theirs)} (first difference at layer {where}). {remedy}")


def unique_parameters(model):
    """Every parameter once (tied embeddings share one tensor)."""
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def count_params(model) -> dict:
    """Total parameters (tied embeddings counted once) and those in attention + MLP weights."""
    total = sum(p.numel() for p in unique_parameters(model))
    attn_mlp = 0
    for i in range(len(decoder_layers(model))):
        parts = block_parts(model, i)
        for lin in (getattr(parts, name) for name in LINEARS):
            attn_mlp += lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
    return {"total": total, "attention_mlp": attn_mlp}


def summary(model) -> dict:
    """Architecture card: what `python -m bip_core info` prints and the app shows."""
    config = model.config
    geoms = model_geometry(model)
    g0 = geoms[0]
    uniform = all(g == g0 for g in geoms)
    params = count_params(model)
    return {
        "family": family_of(config),
        "layers": len(geoms),
        "hidden": g0.hidden_size,
        "heads": g0.num_attention_heads if uniform else [g.num_attention_heads for g in geoms],
        "kv_heads": g0.num_key_value_heads if uniform else [g.num_key_value_heads for g in geoms],
        "head_dim": g0.head_dim,
        "intermediate": g0.intermediate_size if uniform else [g.intermediate_size for g in geoms],
        "n_rep": g0.n_rep if uniform else [g.n_rep for g in geoms],
        "attention": "MHA" if all(g.n_rep == 1 for g in geoms) else "GQA",
        "vocab": config.vocab_size,
        "params": params["total"],
        "params_attention_mlp": params["attention_mlp"],
        "uniform_layers": uniform,
    }

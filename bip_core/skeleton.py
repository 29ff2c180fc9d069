"""A model with no weights: every parameter on the meta device, built in milliseconds for any size.

`empty_model(config, dtype)` is what `info` measures and what the layer-wise pipeline runs: its
decoder layers receive their tensors one at a time from a weight source (bip_core.weights). Buffers
that are not saved with the weights (the rotary `inv_freq`) are real and on the CPU
(`init_empty_weights(include_buffers=False)`), since nothing would ever load them otherwise. An
export's config (with `bip_layer_shapes`) gives the pruned classes, so every layer has its own shape.
"""
from __future__ import annotations

import torch

from .architecture import family_of


LAYER_SHAPES_KEY = "bip_layer_shapes"  # modeling_bip_pruned's key, not imported: it imports every family


def _model_class(config):
    if not getattr(config, LAYER_SHAPES_KEY, None):
        return None
    from .modeling_bip_pruned import PRUNED_CLASSES

    return PRUNED_CLASSES[family_of(config)]


def empty_model(config, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model of `config` with parameters on the meta device (in `dtype`), buffers on the CPU."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    family_of(config)
    cls = _model_class(config)
    with init_empty_weights(include_buffers=False):
        if cls is None:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = cls._from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights re-registers parameters and loses the tie
    return model.eval()


def is_skeleton(model: torch.nn.Module) -> bool:
    """True when the model's weights are not in memory (meta parameters)."""
    return any(p.device.type == "meta" for p in model.parameters())


__all__ = ["empty_model", "is_skeleton"]

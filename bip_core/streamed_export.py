"""Prune and export a model without holding it: every tensor is read from the base model's weights,
sliced, compensated, and written to the export's safetensors shards one at a time.

    weights = open_weights(folder)                     # or ModuleWeights(model)
    prune_and_export(weights, AutoConfig.from_pretrained(folder), tokenizer, plan, "out/")

The result is the folder `export_model(prune_model(model, plan, ...), ...)` writes (same config,
tensors, plan and manifest; see bip_core.export), made with one tensor in memory at a time (and the
compensation biases of the current layer) instead of two models. The pruned model's structure comes
from a skeleton on the meta device built from the pruned config: names and shapes, no data.

With `refit=` (bip_core.refit_store, e.g. the temporary files `sequential.calibrate_and_compress`
wrote for a streamed model) a layer's refit o_proj / down_proj weight and bias are taken from it,
in place of the sliced source tensors and any bias compensation.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .architecture import linear_name, parse_linear_name
from .errors import ExportError
from .export import GENERATION_CONFIG_FILE, MAX_SHARD_BYTES, write_export
from .plan import Plan
from .refit_store import fitted_tensors
from .skeleton import empty_model
from .weights import StateDictWeights
from .surgery import compensated, compensation_bias, compensation_inputs, kept_indices, pruned_tensor, \
    record_pruned_shapes


class PrunedWeights(StateDictWeights):
    """The pruned model's tensors, made on demand from the base model's weight source (the same interface
    as bip_core.weights: names, shape, dtype, get). `dtype` casts floating tensors."""

    def __init__(self, source, plan: Plan, skeleton, compensation_means: list[dict] | None = None,
                 dtype: torch.dtype | None = None, refit=None):
        self.source, self.plan, self.means, self.cast, self.refit = source, plan, compensation_means, dtype, refit
        self.state = skeleton.state_dict(keep_vars=True)
        self._layer: tuple[int, dict, dict, dict] | None = None  # (layer, kept indices, biases, refit tensors)

    def dtype(self, name: str) -> torch.dtype:
        parsed = parse_linear_name(name)
        source_name = name if name in self.source or parsed is None else linear_name(parsed[0], parsed[1])
        dtype = self.source.dtype(source_name)  # a compensation bias takes its weight's dtype
        return self.cast if self.cast is not None and dtype.is_floating_point else dtype

    def get(self, name: str, device=None, dtype=None) -> torch.Tensor:
        parsed = parse_linear_name(name)
        tensor = self.source.get(name) if parsed is None else self._pruned_linear(*parsed)
        return tensor.to(device=device or tensor.device, dtype=dtype or self.dtype(name))

    def _layer_state(self, i: int) -> tuple[dict, dict, dict]:
        """Layer i's kept indices, compensation biases and refit tensors (the last layer asked for is kept)."""
        if self._layer is None or self._layer[0] != i:
            self._layer = None  # let go of the previous layer's before reading this one's
            kept = kept_indices(self.plan, i)
            means = self.means[i] if self.means is not None else {}
            biases = {name: compensation_bias(self.source.get(linear_name(i, name)), kept[name][1], mean)
                      for name, mean in means.items() if mean is not None}
            refit = fitted_tensors(self.refit[i]) if self.refit is not None else {}
            self._layer = (i, kept, biases, refit)
        return self._layer[1:]

    def _pruned_linear(self, i: int, linear: str, param: str) -> torch.Tensor:
        kept, biases, refit = self._layer_state(i)
        if f"{linear}.{param}" in refit:
            return refit[f"{linear}.{param}"]
        dim, index = kept[linear]
        name = linear_name(i, linear, param)
        tensor = self.source.get(name) if name in self.source else None
        compensation = biases.get(linear) if param == "bias" else None
        return pruned_tensor(tensor, param, dim, torch.tensor(index, dtype=torch.long), compensation)


def _check_weights(weights, base) -> None:
    """Every tensor the base model needs is in `weights` with its shape (a tied lm_head may be absent)."""
    seen = set()
    for name, value in base.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        if name not in weights:
            raise ExportError(f"The weights lack '{name}', which the config needs: the weights and the config "
                              "are of different models. Give the config of the model whose weights these are.")
        if tuple(weights.shape(name)) != tuple(value.shape):
            raise ExportError(f"'{name}' has shape {tuple(weights.shape(name))} in the weights but "
                              f"{tuple(value.shape)} in the config: they are of different models.")


def pruned_skeleton(config, plan: Plan, weights, bias_compensation: bool, refit=None) -> torch.nn.Module:
    """The pruned model on the meta device: the plan's layer shapes, with an o_proj / down_proj bias where
    the base has one, compensation adds one or the refit has one (as `surgery.prune_model` builds it)."""
    shapes = plan.pruned_shapes()
    for i, shape in enumerate(shapes):
        refit_keys = refit.keys(i) if refit is not None else set()
        for name in ("o_proj", "down_proj"):
            shape[f"{name}_bias"] = (linear_name(i, name, "bias") in weights or f"{name}.bias" in refit_keys
                                     or bool(bias_compensation and compensated(plan, i, name)))
    pruned_config = copy.deepcopy(config)
    record_pruned_shapes(pruned_config, shapes, bias_compensation or bool(refit is not None and refit.keys(0)))
    return empty_model(pruned_config)


def _generation_config(weights, skeleton):
    """The source folder's generation_config.json when it has one, else the one the config implies."""
    folder = getattr(weights, "folder", None)
    if folder is not None and (Path(folder) / GENERATION_CONFIG_FILE).is_file():
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(folder)
    source_model = getattr(weights, "model", None)  # ModuleWeights: the model's own
    return getattr(source_model, "generation_config", None) or skeleton.generation_config


def prune_and_export(weights, config, tokenizer, plan: Plan, folder, bias_compensation: bool = False,
                     scores=None, dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                     provenance: dict | None = None, refit=None) -> Path:
    """Prune the model whose tensors `weights` holds (FolderWeights or ModuleWeights; `config` its
    transformers config) with `plan` and export it to `folder`, atomically, one tensor at a time.
    Same folder as export_model(prune_model(...)); `dtype` casts floating tensors (None keeps each one's).
    refit: a bip_core.refit_store store whose layers' o_proj / down_proj tensors replace the sliced ones."""
    base = empty_model(config)
    plan.check_matches(base)
    _check_weights(weights, base)
    means = compensation_inputs(plan, scores) if bias_compensation else None
    skeleton = pruned_skeleton(config, plan, weights, bias_compensation, refit)
    tensors = PrunedWeights(weights, plan, skeleton, means, dtype, refit)
    return write_export(skeleton, tensors, tokenizer, plan, folder, provenance, max_shard_bytes,
                        _generation_config(weights, skeleton))


__all__ = ["prune_and_export", "PrunedWeights", "pruned_skeleton"]

"""Layer-wise calibration: one decoder layer in memory at a time.

    entries = run_layerwise(model, weights, input_ids, stats, batch_size=8, device="cuda",
                            dtype=torch.bfloat16, progress=None, after_layer=None)

The model may be a skeleton on the meta device (`accelerate.init_empty_weights()` +
`AutoModelForCausalLM.from_config`) or a model in memory; its tensors are read from `weights`
(bip_core.weights: a folder of safetensors, or `ModuleWeights(model)`). llm-compressor's sequential
pipeline and the per-layer loops of FLAP and Wanda work this way:

1. Capture the inputs of the first decoder layer for every calibration batch, with the keyword
   arguments the decoder hands its layers (position embeddings, attention mask, ...): only the
   embeddings (and the rotary embedding) are onloaded, and a catcher in place of layer 0 stops the
   decoder there.
2. For each layer: onload a copy of it (`weights.get` onto `device` in `dtype`; a model in memory that is
   already there and is only read, with no `after_layer`, is used as it is), run every batch
   through it with the metric's taps (bip_core.calibration's TapGroup and LayerStats, exactly as the
   one-pass driver does), finish the layer's statistics, call `after_layer(i, layer, entry)`, keep the
   layer's outputs as the next layer's inputs (on `device`, in `dtype`), and drop the copy.

The calibration pass also yields the outputs. When `after_layer` returns True (it changed the layer,
e.g. pruned it), they are computed again by the changed layer, so sequential pruning and refitting
see the inputs the changed model gives; each layer runs twice only then. Peak memory: one layer +
the activations of all batches (twice while an `after_layer` runs) + the embeddings.
Statistics accumulate in float32 whatever `dtype` is.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .architecture import decoder_layers
from .calibration import LayerStats, Progress, ProgressCounter, TapGroup, first_output
from .errors import ScoresError
from .weights import ModuleWeights

# (layer index, onloaded layer, its finished entry) -> True when it changed the layer (its outputs are then
# computed again); None or False: the outputs of the calibration pass are passed on as they are
AfterLayer = Callable[[int, nn.Module, dict], "bool | None"]


@dataclass
class LayerInputs:
    """The inputs of one decoder layer for every calibration batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)  # [batch, seq, hidden] each
    kwargs: list[dict] = field(default_factory=list)  # attention_mask, position_embeddings, ... per batch


class _Caught(Exception):
    def __init__(self, hidden: torch.Tensor, kwargs: dict):
        super().__init__("layer 0 reached")
        self.hidden, self.kwargs = hidden, kwargs


class _Catcher(nn.Module):
    """Stands in for decoder layer 0 and stops the forward pass with the layer's inputs."""

    def forward(self, hidden_states, *args, **kwargs):
        raise _Caught(hidden_states, kwargs)


def decoder_of(model) -> nn.Module:
    """The decoder without the LM head (e.g. LlamaModel)."""
    return getattr(model, model.base_model_prefix, model)


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The qualified name of `module` inside `model` (the prefix of its tensors' names)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of the model")


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model's modules (device_map, offloading)."""
    return any(hasattr(module, "_hf_hook") for module in model.modules())


def onload(model: nn.Module, module: nn.Module, weights, device, dtype) -> nn.Module:
    """A copy of `module` (of `model`) whose parameters are read from `weights` onto `device`,
    floating ones in `dtype`; the original (meta skeleton or in memory) is left untouched."""
    prefix = module_name(model, module)
    placeholders = {id(p): nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)
                    for p in module.parameters()}
    twin = copy.deepcopy(module, placeholders)  # the structure; no tensor data copied
    for name, _ in list(twin.named_parameters()):
        full = f"{prefix}.{name}" if prefix else name
        if full not in weights:
            raise ScoresError(f"The weights have no tensor '{full}': they do not belong to this model.")
        wanted = dtype if weights.dtype(full).is_floating_point else None
        owner_name, _, attr = name.rpartition(".")
        owner = twin.get_submodule(owner_name)
        owner._parameters[attr] = nn.Parameter(weights.get(full, device=device, dtype=wanted), requires_grad=False)
    return twin.to(device).eval()  # buffers too


def readable_in_place(model: nn.Module, module: nn.Module, weights, device, dtype) -> bool:
    """Whether `module` itself can stand in for its onloaded copy: its weights are `weights` (the model in
    memory, bip_core.weights.ModuleWeights) and already sit on `device`, the floating ones in `dtype`.
    Statistics only read a layer, so scoring a model in memory layer by layer then copies nothing; a pass
    that changes layers (after_layer) always works on copies."""
    if not isinstance(weights, ModuleWeights) or weights.model is not model:
        return False
    device = torch.device(device) if device is not None else None
    return all(p.device.type != "meta" and (device is None or p.device == device)
               and (dtype is None or not p.is_floating_point() or p.dtype == dtype)
               for p in module.parameters())


def _on_device(model: nn.Module, module: nn.Module, weights, device, dtype, changes: bool) -> nn.Module:
    """`module` to compute with: itself where it can be read in place and will not be changed, else a copy."""
    if not changes and readable_in_place(model, module, weights, device, dtype):
        return module
    return onload(model, module, weights, device, dtype)


def _rotary_on(decoder: nn.Module, device) -> nn.Module:
    rotary = decoder.rotary_emb
    if any(b.device.type == "meta" for b in rotary.buffers()):  # a skeleton made under torch.device("meta")
        rotary = type(rotary)(config=rotary.config)
    return copy.deepcopy(rotary).to(device)


def capture_layer_inputs(model, weights, batches: list[torch.Tensor], device, dtype) -> LayerInputs:
    """Run only the embeddings over `batches` and catch what decoder layer 0 would receive."""
    decoder = decoder_of(model)
    layers = decoder_layers(model)
    saved = decoder.embed_tokens, decoder.rotary_emb, layers[0]
    inputs = LayerInputs()
    try:
        decoder.embed_tokens = _on_device(model, decoder.embed_tokens, weights, device, dtype, changes=False)
        decoder.rotary_emb = _rotary_on(decoder, device)
        layers[0] = _Catcher()
        with torch.no_grad():
            for batch in batches:
                try:
                    decoder(input_ids=batch.to(device), use_cache=False)
                except _Caught as caught:
                    inputs.hidden.append(caught.hidden)
                    inputs.kwargs.append(caught.kwargs)
    finally:
        decoder.embed_tokens, decoder.rotary_emb = saved[0], saved[1]
        layers[0] = saved[2]
    return inputs


def check_layerwise(model) -> None:
    """Raise a ScoresError if the layer-wise pipeline cannot run `model` faithfully."""
    if is_dispatched(model):
        raise ScoresError("This model was placed by accelerate (device_map / offloading), which already streams "
                          "its weights: score it with pipeline='whole', or load it as a skeleton "
                          "(load_model(..., pipeline='layerwise')) to score it layer by layer.")
    layer_types = set(getattr(model.config, "layer_types", None) or [])
    if len(layer_types) > 1:
        raise ScoresError(f"Layers of different attention types ({', '.join(sorted(layer_types))}) are not "
                          "supported by the layer-wise pipeline yet; use pipeline='whole'.")


def _run_layer(layer: nn.Module, inputs: LayerInputs, outputs: list | None,
               after_batch: Callable[[int], None] | None = None) -> None:
    """All batches through `layer`; its outputs go into `outputs` (batch by batch; it may be inputs.hidden)."""
    with torch.no_grad():
        for b, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs)):
            out = first_output(layer(hidden, **kwargs))
            if outputs is not None:
                outputs[b] = out
            if after_batch is not None:
                after_batch(b)


def run_layerwise(model, weights, input_ids: torch.Tensor | None, stats: list[LayerStats], *,
                  batch_size: int = 8, device=None, dtype=None, progress: Progress | None = None,
                  desc: str = "calibration", after_layer: AfterLayer | None = None) -> list[dict]:
    """Calibrate `stats[i]` on decoder layer i, one onloaded layer at a time (see the module
    docstring), and return `[stats[i].finish() for each layer]`, each finished while its layer was
    on the device. input_ids=None: weight-only statistics (no data; each layer is onloaded, finished
    and dropped). progress(done, total, desc) after each layer of each batch (each layer without data)."""
    check_layerwise(model)
    layers = decoder_layers(model)
    batches = [] if input_ids is None else list(torch.split(input_ids, max(1, int(batch_size))))
    counter = ProgressCounter(progress, len(layers) * max(1, len(batches)), desc)
    inputs = capture_layer_inputs(model, weights, batches, device, dtype) if batches else None
    entries = []
    for i, skeleton_layer in enumerate(layers):
        layer = _on_device(model, skeleton_layer, weights, device, dtype, changes=after_layer is not None)
        stats[i].bind(layer)
        if input_ids is not None:
            stats[i].begin(input_ids.numel())
        where = f"layer {i + 1}/{len(layers)}"
        outputs = None if inputs is None else (inputs.hidden if after_layer is None else list(inputs.hidden))
        if inputs is not None:
            _calibrate_layer(layer, stats[i], inputs, outputs,
                             after_batch=lambda b: counter.step(f"{where}, batch {b + 1}/{len(batches)}"))
        entries.append(stats[i].finish())
        if inputs is None:
            counter.step(where)
        if after_layer is not None and after_layer(i, layer, entries[-1]) and inputs is not None:
            _run_layer(layer, inputs, outputs)  # the changed layer's outputs
        if inputs is not None:
            inputs.hidden = outputs
        stats[i].bind(skeleton_layer)  # let go of the onloaded copy
        del layer
    return entries


def _calibrate_layer(layer: nn.Module, stats: LayerStats, inputs: LayerInputs, outputs: list | None,
                     after_batch: Callable[[int], None]) -> None:
    taps = TapGroup()
    taps.attach_layer(layer, stats)
    try:
        _run_layer(layer, inputs, outputs, after_batch)
    finally:
        taps.remove()


__all__ = ["run_layerwise", "capture_layer_inputs", "onload", "readable_in_place", "LayerInputs", "check_layerwise",
           "decoder_of", "is_dispatched", "module_name"]

"""The one calibration driver every data-driven metric plugs into.

It runs the dense model over calibration windows in batches and hands four tensors of every decoder
block (METHOD.md section 2) to that block's `LayerStats`:

    on_o_input(z)        z_t: input of o_proj (head outputs)        [tokens, heads * head_dim]
    on_mlp_input(h)      h_t: input of RMSNorm2 (= x_t + a_t)       [tokens, hidden]
    on_down_input(m)     m_t: input of down_proj                    [tokens, intermediate]
    on_block_output(y)   y_t: output of the block                   [tokens, hidden]

Forward metrics run the decoder only (`model.model`: embeddings, rotary, layers, final norm; no LM
head) under `torch.no_grad()`. Backward metrics (taylor) run the full model with the LM-head loss
and call backward once per batch, weighting each batch so the gradients are those of the mean
loss over all calibration tokens.

Statistics are float32 sums on the device of the tensor that feeds them, so memory does not grow
with the number of samples and a model spread over devices by accelerate (device_map="auto",
offloaded weights included) is scored like any other. Weights are read through `weight()`, which
materialises offloaded parameters for the moment they are read.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from .architecture import block_parts, decoder_layers, layer_geometry

Progress = Callable[[int, int, str], None]


def weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight of a Linear as float32 [out, in], readable even when accelerate offloaded it."""
    from accelerate.utils import align_module_device, has_offloaded_params

    offloaded = has_offloaded_params(linear)
    with align_module_device(linear):
        w = linear.weight.detach().float()
        return w.clone() if offloaded else w


class RunningMoments:
    """Mean and sum of squared deviations over tokens, merged batch by batch (Chan et al.), so a
    variance stays accurate in float32 even where the mean is large.

    x: [..., tokens, features]. m2 is per feature [..., features], or with covariance=True the
    scatter matrix [..., features, features] (its trace with a Gram matrix gives the variance of a
    linear map of x)."""

    def __init__(self, covariance: bool = False):
        self.covariance = covariance
        self.count = 0
        self.mean = self.m2 = None

    def _scatter(self, d: torch.Tensor) -> torch.Tensor:  # d: [..., tokens, features]
        if self.covariance:
            return d.transpose(-1, -2) @ d
        return (d * d).sum(-2)

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        n_b = x.shape[-2]
        mean_b = x.mean(-2, keepdim=True)  # [..., 1, features]
        m2_b = self._scatter(x - mean_b)
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n_a, mean_a = self.count, self.mean.to(x.device)
        n = n_a + n_b
        diff = mean_b - mean_a
        self.mean = mean_a + diff * (n_b / n)
        self.m2 = self.m2.to(x.device) + m2_b + self._scatter(diff) * (n_a * n_b / n)
        self.count = n

    def variance(self, unbiased: bool = False) -> torch.Tensor:
        """Per-feature variance (or covariance matrix) over all tokens seen, on the CPU."""
        return self.m2.cpu() / max(1, self.count - (1 if unbiased else 0))


class LayerStats:
    """Statistics of one decoder block. The base class keeps what every calibrated method records:
    the token count, the mean inputs of o_proj and down_proj (for bias compensation) and the sum of
    ||y_t|| (the block's output scale). Subclasses add their own sums and call `super()` first."""

    def __init__(self, model, index: int, unit: str, options: dict, seed: int):
        self.index, self.unit, self.options, self.seed = index, unit, options, seed
        self.parts = block_parts(model, index)
        self.geometry = layer_geometry(model, index)
        self.tokens = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.silenced = _nothing  # set by the driver: run modules of the block without feeding hooks

    def add(self, name: str, value: torch.Tensor) -> None:
        """Running float32 sum `name` += value, kept on the device of `value`."""
        value = value.float()
        old = self.sums.get(name)
        self.sums[name] = value if old is None else old.to(value.device) + value

    def mean(self, name: str) -> torch.Tensor:
        return self.sums[name].cpu() / max(1, self.tokens)

    # Taps (each receives detached [tokens, features] tensors) ------------------------------------
    def on_o_input(self, z: torch.Tensor) -> None:
        self.add("o_input", z.sum(0, dtype=torch.float32))

    def on_mlp_input(self, h: torch.Tensor) -> None:
        pass

    def on_down_input(self, m: torch.Tensor) -> None:
        self.add("down_input", m.sum(0, dtype=torch.float32))

    def on_block_output(self, y: torch.Tensor) -> None:
        self.tokens += y.shape[0]  # the last tap of a block: count its tokens once
        self.add("output_norm", torch.linalg.vector_norm(y.float(), dim=-1).sum())

    def finish(self) -> dict:
        """The layer's entry of the scores file; subclasses add `attention` and `mlp`."""
        if self.tokens == 0:
            return {}
        return {"output_scale": self.mean("output_norm").item(),
                "o_input_mean": self.mean("o_input"),
                "down_input_mean": self.mean("down_input")}


@contextmanager
def _nothing():
    yield


class _Hooks:
    """Forward hooks feeding each block's taps to its LayerStats; silenced while stats probe."""

    def __init__(self):
        self.handles = []
        self.active = True

    @contextmanager
    def silenced(self):
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def tap(self, module, feed: Callable[[torch.Tensor], None], use_output: bool = False) -> None:
        def hook(_module, args, output):
            if self.active:
                x = output if use_output else args[0]
                if isinstance(x, tuple):
                    x = x[0]
                feed(x.detach().flatten(0, -2))  # [batch, seq, f] -> [tokens, f]
        self.handles.append(module.register_forward_hook(hook))

    def after(self, module, call: Callable[[], None]) -> None:
        self.handles.append(module.register_forward_hook(lambda *_: call()))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _input_device(model) -> torch.device:
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device  # offloaded: accelerate moves inputs


def run_calibration(model, input_ids: torch.Tensor, stats: list[LayerStats], batch_size: int = 8,
                    progress: Progress | None = None, desc: str = "calibration",
                    backward: bool = False) -> None:
    """Feed every block's taps to `stats[i]` while the model runs over `input_ids` [N, L].

    backward=False: decoder only, no gradients. backward=True: full model with the LM loss
    (labels = inputs), one backward per batch, gradients accumulated into the parameters that
    require them (the caller chooses which)."""
    layers = decoder_layers(model)
    if len(stats) != len(layers):
        raise ValueError(f"need one LayerStats per decoder layer ({len(layers)}), got {len(stats)}")
    batches = torch.split(input_ids, max(1, int(batch_size)))
    total, done = len(batches) * len(layers), 0
    hooks = _Hooks()

    def layer_done():
        nonlocal done
        done += 1
        if progress is not None:
            batch_number = (done - 1) // len(layers) + 1
            progress(done, total, f"{desc}: batch {batch_number}/{len(batches)}")

    device = _input_device(model)
    decoder = getattr(model, model.base_model_prefix, model)  # e.g. LlamaModel: no LM head
    try:
        for i, s in enumerate(stats):
            parts = block_parts(model, i)
            s.silenced = hooks.silenced
            hooks.tap(parts.o_proj, s.on_o_input)
            hooks.tap(parts.post_norm, s.on_mlp_input)
            hooks.tap(parts.down_proj, s.on_down_input)
            hooks.tap(parts.layer, s.on_block_output, use_output=True)
            hooks.after(parts.layer, layer_done)
        with torch.set_grad_enabled(backward):
            for batch in batches:
                ids = batch.to(device)
                if backward:
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    (loss * (len(batch) / len(input_ids))).backward()
                else:
                    decoder(input_ids=ids, use_cache=False)
    finally:
        hooks.remove()
        for s in stats:
            s.silenced = _nothing

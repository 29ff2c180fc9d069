"""The one calibration driver every data-driven metric plugs into.

It runs the dense model over calibration windows in batches and, once a decoder block has run a
batch, hands what happened inside it (METHOD.md section 2) to that block's `LayerStats` in one call,
`on_block(BlockTaps(z, h, m, f, y))`:

    z_t  input of o_proj (head outputs)        [tokens, heads * head_dim]
    h_t  input of RMSNorm2 (= x_t + a_t)       [tokens, hidden]
    m_t  input of down_proj                    [tokens, intermediate]
    f_t  output of the MLP, F(h_t)             [tokens, hidden]
    y_t  output of the block (= h_t + f_t)     [tokens, hidden]

The taps are collected by forward hooks (`TapGroup`) that can be muted as a group. The same taps
and statistics serve the one-pass driver here (`run_calibration`, the whole model in memory) and
the layer-wise pipeline (bip_core.pipeline, one decoder layer at a time).

Forward metrics run the decoder only (`model.model`: embeddings, rotary, layers, final norm; no LM
head) under `torch.no_grad()`. Backward metrics (taylor) run the full model with the LM-head loss
and call backward once per batch, weighting each batch so the gradients are those of the mean
loss over all calibration tokens.

Statistics are float32 sums on the device of the tensor that feeds them, so memory does not grow
with the number of samples and a model spread over devices by accelerate (device_map="auto",
offloaded weights included) is scored like any other. Weights are read through `weight()`, which
materialises offloaded parameters for the moment they are read, or `weight_rows()` / `weight_sums()`,
which convert a block of rows to float32 at a time (no full-size float32 copy of a bfloat16 weight).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch

from .architecture import BlockParts, block_parts, decoder_layers, input_device, layer_geometry

Progress = Callable[[int, int, str], None]


def weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight of a Linear as float32 [out, in], readable even when accelerate offloaded it."""
    from accelerate.utils import align_module_device, has_offloaded_params

    offloaded = has_offloaded_params(linear)
    with align_module_device(linear):
        w = linear.weight.detach().float()
        return w.clone() if offloaded else w


BLOCK_BYTES = 2**19  # float32 bytes of the row blocks that statistics convert at a time (float_blocks)


def float_blocks(x: torch.Tensor):
    """x [..., rows, features] as float32 blocks of rows, about BLOCK_BYTES each (views when x is
    float32 already: do not modify them in place). Statistics of a half-precision tensor computed
    block by block stay in a core's cache instead of streaming a full-size float32 copy: three to
    five times faster on a Llama-2-7B layer's MLP activations and weights (CPU). On a GPU x comes as
    one block: its caching allocator reuses the full-size copy, and every block would be a kernel launch."""
    if x.device.type != "cpu":
        return iter([x.float()])
    rows = max(1, BLOCK_BYTES // (4 * max(1, x[..., :1, :].numel())))
    return (block.float() for block in x.split(rows, dim=-2))


def weight_rows(linear: torch.nn.Module):
    """The weight of a Linear as float32 row blocks (float_blocks), readable even when accelerate
    offloaded it: statistics of a large half-precision weight without a full-size float32 copy."""
    from accelerate.utils import align_module_device

    with align_module_device(linear):
        yield from float_blocks(linear.weight.detach())


def weight_sums(linear: torch.nn.Module, elementwise: Callable[[torch.Tensor], torch.Tensor],
                dim: int) -> torch.Tensor:
    """elementwise(W) of a Linear summed over dim (0: over its rows, [in]; 1: over its columns,
    [out]) in float32, a block of rows at a time (weight_rows), on the weight's device."""
    blocks = (elementwise(block) for block in weight_rows(linear))
    if dim == 0:
        return sum(column_sum(block)[0] for block in blocks)
    return torch.cat([block.sum(1) for block in blocks])


def column_sum(x: torch.Tensor) -> torch.Tensor:
    """x [..., rows, features] (e.g. tokens x features) summed over rows, float32 [..., 1, features]:
    a product with a row of ones, which on CPU takes half the time of a reduction over that axis
    (block by block for a half-precision x, see float_blocks)."""
    if x.dtype != torch.float32:
        return sum(column_sum(block) for block in float_blocks(x))
    return torch.ones(1, x.shape[-2], dtype=x.dtype, device=x.device) @ x


def centred_column_sums(x: torch.Tensor, centre: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over rows of x - centre, sum over rows of (x - centre)^2), float32 [..., 1, features] each, in one
    read of x: block by block (float_blocks), each block's difference made once (into one reused buffer when
    the blocks are views of x) and summed twice while it is in cache, instead of a column sum and then a sum
    of squares that each read x."""
    first = second = scratch = None
    for block in float_blocks(x):
        if block.dtype == x.dtype:  # a view of x (float32 already): do not change it
            if scratch is None:
                scratch = torch.empty_like(block)
            block = torch.sub(block, centre, out=scratch[..., :block.shape[-2], :])
        else:  # a float32 copy of a half-precision block
            block.sub_(centre)
        deviation, squares = column_sum(block), column_sum(block.square_())
        first, second = (deviation, squares) if first is None else (first + deviation, second + squares)
    return first, second


def column_sum_of_abs(x: torch.Tensor) -> torch.Tensor:
    """sum over rows of |x|, float32 [..., 1, features], block by block (float_blocks)."""
    return sum(column_sum(block.abs()) for block in float_blocks(x))


def add_outer(into: torch.Tensor, d: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """into += alpha x d^T d over d's rows ([..., rows, f] -> [..., f, f]; `into` contiguous), in place, with
    no [..., f, f] temporary; returns `into`."""
    rows = d.reshape(-1, *d.shape[-2:])
    into.view(-1, *into.shape[-2:]).baddbmm_(rows.mT, rows, alpha=alpha)
    return into


def symmetric_blocks(features: int) -> list[int]:
    """Bounds of the blocks of features that `add_outer_upper` splits a symmetric product into: 2 below 512
    features, 4 from there (none below 128). The upper blocks are 3/4 and 5/8 of the products; measured on one
    CPU thread over 1024 rows, 20-35% faster than the whole product from 128 to 4096 features."""
    count = 1 if features < 128 else 2 if features < 512 else 4
    return [features * i // count for i in range(count + 1)]


def upper_blocks(features: int, diagonal: bool = True) -> list[tuple[slice, slice]]:
    """(rows, columns) of the symmetric_blocks on and above the diagonal (diagonal=False: strictly above)."""
    bounds = symmetric_blocks(features)
    spans = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    return [(rows, columns) for i, rows in enumerate(spans) for columns in spans[i if diagonal else i + 1:]]


def add_outer_upper(into: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """add_outer(into, d) on the blocks on and above the diagonal only (symmetric_blocks): the blocks below it
    are left as they were until `mirror_upper` fills them. Scatter and Gram matrices accumulate this way."""
    rows, target = d.reshape(-1, *d.shape[-2:]), into.view(-1, *into.shape[-2:])
    for top, left in upper_blocks(d.shape[-1]):
        target[:, top, left].baddbmm_(rows[..., top].mT, rows[..., left])
    return into


def mirror_upper(into: torch.Tensor) -> torch.Tensor:
    """The blocks below the diagonal of a symmetric matrix [..., f, f] made by add_outer_upper, copied in place
    from those above it; returns `into`."""
    for top, left in upper_blocks(into.shape[-1], diagonal=False):
        into[..., left, top].copy_(into[..., top, left].mT)
    return into


SHIFT_TOKENS = 128  # RunningMoments' shift: the mean of about this many tokens, evenly spaced in the first batch


class RunningMoments:
    """Mean and scatter (sum of squared deviations from the mean) over tokens, accumulated in place batch
    by batch about a fixed shift near the mean, that of about SHIFT_TOKENS tokens evenly spaced in the
    first batch ("shifted data"): a variance stays accurate in float32 even where the mean is far larger
    than the spread, and a batch adds no full-size temporaries (a [features, features] scatter is updated
    in place).

    x: [..., tokens, features]. `m2` is the scatter per feature [..., features], or with covariance=True
    the scatter matrix [..., features, features] (its trace with a Gram matrix gives the variance of a
    linear map of x). The running scatter matrix holds only its blocks on and above the diagonal
    (add_outer_upper); `m2` and `take_m2` mirror it."""

    def __init__(self, covariance: bool = False):
        self.covariance = covariance
        self.count = 0
        self.shift = self.offset = self.shifted = None  # c; sum_t (x_t - c); scatter of x about c

    def add(self, x: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        """Add the tokens of x; `total`: x summed over tokens ([..., 1, features]) when the caller has it
        already. Returns that sum (float32), e.g. for a caller's own running mean: per-feature moments make it
        in the same read of x as the squares (centred_column_sums), so a caller need not sum x first."""
        n_b = x.shape[-2]
        if total is not None:
            total = total.float()
        elif self.covariance:
            total = column_sum(x)
        if self.count == 0:  # the shift: the mean of SHIFT_TOKENS tokens spread over the batch (not a read of all)
            sample = x[..., ::max(1, n_b // SHIFT_TOKENS), :]
            self.shift = column_sum(sample) / sample.shape[-2]
            self.offset = torch.zeros_like(self.shift)
            features = self.shift.shape[-1]
            self.shifted = self.shift.new_zeros(*self.shift.shape[:-2], *((features,) * (2 if self.covariance else 1)))
        elif self.shifted.device != x.device:
            self.shift, self.offset, self.shifted = (t.to(x.device) for t in (self.shift, self.offset, self.shifted))
        if self.covariance:
            d = torch.empty(x.shape, device=x.device)  # contiguous and float32 whatever x's strides and dtype
            add_outer_upper(self.shifted, torch.sub(x, self.shift, out=d))  # mirrored when read (_about_mean)
            self.offset += total - n_b * self.shift
        else:  # the sum over tokens comes with the squares, from the same read of x
            deviation, squares = centred_column_sums(x, self.shift)
            self.shifted += squares[..., 0, :]
            self.offset += deviation
            total = deviation + n_b * self.shift if total is None else total
        self.count += n_b
        return total

    @property
    def mean(self) -> torch.Tensor | None:  # [..., 1, features]
        return None if self.count == 0 else self.shift + self.offset / self.count

    @property
    def m2(self) -> torch.Tensor | None:
        """The scatter about the mean: the scatter about the shift less count x (mean - shift)^2."""
        if self.count == 0:
            return None
        return self._about_mean(self.shifted.clone())

    def _about_mean(self, scatter: torch.Tensor) -> torch.Tensor:
        if self.covariance:
            return add_outer(mirror_upper(scatter), self.offset, alpha=-1 / self.count)
        return scatter.sub_(self.offset[..., 0, :].square() / self.count)

    def take_m2(self) -> torch.Tensor:
        """m2 made in place from the running scatter, which this gives up (one [features, features] matrix
        alive rather than two: 485 MB for a 7B down_proj's inputs)."""
        scatter, self.shifted = self.shifted, None
        return self._about_mean(scatter)

    def variance(self, unbiased: bool = False) -> torch.Tensor:
        """Per-feature variance (or covariance matrix) over all tokens seen, on the CPU."""
        return self.m2.cpu() / max(1, self.count - (1 if unbiased else 0))


@dataclass
class BlockTaps:
    """What one batch did inside one decoder block (METHOD.md section 2), [tokens, features] each:

    z  input of o_proj (head outputs)          [tokens, heads * head_dim]
    h  input of RMSNorm2 (= x + a)             [tokens, hidden]
    m  input of down_proj                      [tokens, intermediate]
    f  output of the MLP, F(h)                 [tokens, hidden]
    y  output of the block (= h + f)           [tokens, hidden]
    """

    z: torch.Tensor
    h: torch.Tensor
    m: torch.Tensor
    f: torch.Tensor
    y: torch.Tensor


def layer_parts(layer: torch.nn.Module) -> BlockParts:
    """The BlockParts of a decoder layer module on its own (e.g. a copy onloaded by the pipeline)."""
    return block_parts(SimpleNamespace(layers=[layer]), 0)


class LayerStats:
    """Statistics of one decoder block. The base class keeps what every calibrated method records:
    the token count, the mean inputs of o_proj and down_proj (for bias compensation) and the mean and
    median of ||y_t|| (the block's output scale, bip_core.allocation BLOCK_SCALES). Subclasses add their
    own sums and call `super()` first.

    The driver calls `on_block(taps)` once per batch, after the block ran; `finish()` while
    `self.parts` (the block's modules, re-pointed by `bind(layer)` at an onloaded copy in the
    layer-wise pipeline) still hold the weights. `self.muted()` runs modules of the block without
    feeding any taps (for probes)."""

    def __init__(self, model, index: int, unit: str, options: dict, seed: int):
        self.index, self.unit, self.options, self.seed = index, unit, options, seed
        self.parts = block_parts(model, index)
        self.geometry = layer_geometry(model, index)
        self.tokens = 0
        self.planned_tokens: int | None = None  # all calibration tokens, told by the driver (`begin`)
        self.sums: dict[str, torch.Tensor] = {}
        self.output_norms: list[torch.Tensor] = []  # ||y_t|| [tokens] per batch, for the median (4 bytes a token)
        self.muted = _nothing  # set by the driver

    def begin(self, planned_tokens: int) -> None:
        """Called by the driver before the first batch with the number of calibration tokens to come."""
        self.planned_tokens = int(planned_tokens)

    def bind(self, layer: torch.nn.Module) -> None:
        """Read weights from `layer` (a copy of this block holding real tensors) from now on."""
        self.parts = layer_parts(layer)

    def add(self, name: str, value: torch.Tensor) -> None:
        """Running float32 sum `name` += value, kept on the device of `value`."""
        value = value.float()
        old = self.sums.get(name)
        self.sums[name] = value if old is None else old.to(value.device) + value

    def mean(self, name: str) -> torch.Tensor:
        return self.sums[name].cpu() / max(1, self.tokens)

    def on_block(self, taps: BlockTaps) -> None:
        """One batch through the block: the per-tap updates below, in the block's order."""
        self.on_o_input(taps.z)
        self.on_down_input(taps.m)
        self.on_block_output(taps.y)

    def on_o_input(self, z: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        """Adds z's sum over tokens (`total`, [1, features], when a subclass has it already) to "o_input" and
        returns it (for subclasses)."""
        total = column_sum(z) if total is None else total
        self.add("o_input", total[0])
        return total

    def on_down_input(self, m: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        """Adds m's sum over tokens (`total`, [1, features], when a subclass has it already) to "down_input"
        and returns it (for subclasses)."""
        total = column_sum(m) if total is None else total
        self.add("down_input", total[0])
        return total

    def on_block_output(self, y: torch.Tensor) -> None:
        self.tokens += y.shape[0]
        norms = torch.linalg.vector_norm(y.float(), dim=-1)
        self.add("output_norm", norms.sum())
        self.output_norms.append(norms)

    def finish(self) -> dict:
        """The layer's entry of the scores file; subclasses add `attention` and `mlp`."""
        if self.tokens == 0:
            return {}
        return {"output_scale": self.mean("output_norm").item(),
                "output_median": torch.cat(self.output_norms).median().item(),  # the lower middle one
                "o_input_mean": self.mean("o_input"),
                "down_input_mean": self.mean("down_input")}


@contextmanager
def _nothing():
    yield


def first_output(x):
    """A module's main output (decoder layers return a tuple in older transformers versions)."""
    return x[0] if isinstance(x, tuple) else x


class TapGroup:
    """Forward hooks that collect each block's taps during a batch and hand them to the block's
    LayerStats together once the block has run. The whole group can be muted (llm-compressor's
    disabled hooks): probes and the pipeline's propagation passes run without feeding statistics."""

    def __init__(self):
        self.handles = []
        self.fed: list[LayerStats] = []
        self.active = True

    @contextmanager
    def muted(self):
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def attach(self, parts: BlockParts, stats: LayerStats, after_block: Callable[[], None] | None = None) -> None:
        """Tap the block `parts`; after each batch call stats.on_block(taps), then after_block()."""
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str, use_output: bool = False):
            def hook(_module, args, output):
                if self.active:
                    seen[name] = first_output(output if use_output else args[0]).detach().flatten(0, -2)
            return hook

        def block_done(_module, _args, output):
            if self.active:
                y = first_output(output).detach().flatten(0, -2)  # [batch, seq, f] -> [tokens, f]
                stats.on_block(BlockTaps(y=y, **seen))
                seen.clear()
                if after_block is not None:
                    after_block()

        for module, name, use_output in ((parts.o_proj, "z", False), (parts.post_norm, "h", False),
                                         (parts.down_proj, "m", False), (parts.mlp, "f", True)):
            self.handles.append(module.register_forward_hook(keep(name, use_output)))
        self.handles.append(parts.layer.register_forward_hook(block_done))
        stats.muted = self.muted
        self.fed.append(stats)

    def attach_layer(self, layer: torch.nn.Module, stats: LayerStats,
                     after_block: Callable[[], None] | None = None) -> None:
        self.attach(layer_parts(layer), stats, after_block)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for stats in self.fed:
            stats.muted = _nothing
        self.handles.clear()
        self.fed.clear()


class ProgressCounter:
    """Counts finished steps and reports progress(done, total, "desc: where") after each."""

    def __init__(self, progress: Progress | None, total: int, desc: str):
        self.progress, self.total, self.desc, self.done = progress, total, desc, 0

    def step(self, where: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, f"{self.desc}: {where}")


def run_calibration(model, input_ids: torch.Tensor, stats: list[LayerStats], batch_size: int = 8,
                    progress: Progress | None = None, desc: str = "calibration",
                    backward: bool = False) -> None:
    """Feed every block's taps to `stats[i]` while the whole model runs over `input_ids` [N, L].

    backward=False: decoder only, no gradients. backward=True: full model with the LM loss
    (labels = inputs), one backward per batch, gradients accumulated into the parameters that
    require them (the caller chooses which)."""
    layers = decoder_layers(model)
    if len(stats) != len(layers):
        raise ValueError(f"need one LayerStats per decoder layer ({len(layers)}), got {len(stats)}")
    batches = torch.split(input_ids, max(1, int(batch_size)))
    counter = ProgressCounter(progress, len(batches) * len(layers), desc)

    def step():
        counter.step(f"batch {counter.done // len(layers) + 1}/{len(batches)}")

    taps = TapGroup()
    device = input_device(model)
    decoder = getattr(model, model.base_model_prefix, model)  # e.g. LlamaModel: no LM head
    try:
        for i, s in enumerate(stats):
            s.begin(input_ids.numel())
            taps.attach(block_parts(model, i), s, step)
        with torch.set_grad_enabled(backward):
            for batch in batches:
                ids = batch.to(device)
                if backward:
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    (loss * (len(batch) / len(input_ids))).backward()
                else:
                    decoder(input_ids=ids, use_cache=False)
    finally:
        taps.remove()

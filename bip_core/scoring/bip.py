"""LLM-BIP: block-wise forward importance propagation (METHOD.md section 2), one forward pass.

Block l, token t: z_tk = output of head k (o_proj input), h_t = x_t + a_t, m_tj = down_proj input,
y_t = h_t + sum_j W_down[:, j] m_tj, F(h) = MLP(RMSNorm2(h)), delta_tg = sum_{k in g} W_O^(k) z_tk.

    I_ch(l, j)  = ||W_down[:, j]||_2 * mean_t |m_tj|               exact block-output change
    I_att(l, g) = A_lg * mean_t ||delta_tg||_2                     A_lg: the attention factor

How far the MLP after the attention carries a unit's change into the block output (lipschitz=):
    "directional" (default)  A_lg = sum_t ||delta_tg + F(h_t) - F(h_t - delta_tg)|| / sum_t ||delta_tg||
                             on the probe tokens: the MLP's measured gain along the unit's own change,
                             so I_att is the measured block-output change of removing the unit
                             (exactly so when every calibration token is probed)
    "measured"               A_lg = 1 + L_l, an upper bound, with
                             L_l = max (or a quantile) over probe tokens of ||F(h+e) - F(h)|| / ||e||,
                             e random with ||e|| = eps * ||h||
    "zero"                   A_lg = 1 ("direct": the residual change only)

The probes cost a fixed share of the pass, whatever the calibration size and the number of units:
the gains take units MLP token-passes per probed token and L one, and together they run one MLP
token-pass per `probe_share` (64) calibration tokens, so each probe uses
k = min(lipschitz_tokens, max(4, calibration tokens / (probe_share x (units + 1)))) tokens drawn
(seeded) from the first calibration batches (on the default model, 3 units: 8 at 16 x 128, 32 at
64 x 128, 128 at 256 x 128; on a Llama-2-7B layer, 32 heads: 4 up to 64 x 128, 16 at 256 x 128), all in
one MLP call, reusing F(h) from the block's own pass (probe_share=0: every calibration token, up to
lipschitz_tokens; their rows riding in the model's own MLP call instead saved nothing measurable, README
"Cost of scoring"). The gain probe's tokens are drawn by `probe_sampling` (PROBE_SAMPLING): "stratified"
(default) samples the tokens where the MLP writes an outlier as a stratum of their own and weighs each
probed token by its stratum's size; "random" draws them all alike (L's tokens are always random). L_l is always
estimated and recorded ("lipschitz_estimate") for the app's teaching chart;
"lipschitz" is the L_l the score used, "unit_gain" the directional factors. L_l is a local,
random-direction estimate, not a certified constant: single tokens can exceed (1 + L_l) ||delta||.

||delta_tg||^2 = z_tg^T G_g z_tg with G_g = W_g^T W_g (W_g: o_proj columns of the unit's heads;
[unit channels]^2, far smaller than o_proj itself when a unit is a fraction of the heads).

aggregation (channels): "mean_abs" as above; "rms": sqrt(mean_t m_tj^2); "std": the centred
variant (METHOD.md section 7 point 4): std_t(m_tj) for channels and A_lg * sqrt(mean_t
||delta_tg - mean delta_g||^2) for units, the change that remains after bias compensation (the
directional gain is then measured on the centred change, with the batch mean put back).

Default: "std" with the directional factor, pruned with bias compensation and, for a global
allocation, ranked by energy ("global-energy" in bip_core/plan.py): the best configuration on the
wiki-bb valid split of the default model over three calibration seeds (benchmarks/ablations.py;
README "Choosing LLM-BIP's configuration"). The gain is about 1 in most blocks of the default model
and 2-10 where the MLP amplifies attention (layer 0, and layer 11 with its massive activation),
while the bound 1 + L_l is 1.6-37 and over-protects attention everywhere.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..calibration import (BlockTaps, LayerStats, RunningMoments, add_outer_upper, centred_column_sums,
                           column_sum_of_abs, mirror_upper, weight_rows, weight_sums)
from .seeds import layer_generator
from .units import unit_query_heads

PASS = "forward"
DEFAULTS = {"aggregation": "std", "lipschitz": "directional", "lipschitz_quantile": 1.0,
            "lipschitz_tokens": 128, "probe_share": 64, "probe_sampling": "stratified", "lipschitz_eps": 0.01}
CHOICES = {"aggregation": ("mean_abs", "rms", "std"), "lipschitz": ("directional", "measured", "zero"),
           "probe_sampling": ("random", "stratified")}
# probes of small calibrations (or of many units) use at least this many tokens: 4 tokens per unit prune as well
# as 32 under global-energy (benchmarks/probe_share.py --perplexity, results/probe_share_ppl*.csv). probe_share=64
# (a quarter of the probe work of 16) with random tokens pruned 7-8% worse under uniform and global-std at 64 x 128
# (results/probe_share_uniform.csv); stratified, it prunes within the seeds' noise of 16 there and better at 16 x 128
# (results/probe_sampling*.csv; README "Cost of scoring")
MIN_PROBE_TOKENS = 4
LIMITS = {"lipschitz_quantile": (lambda q: 0 < q <= 1, "in (0, 1]"),
          "lipschitz_tokens": (lambda n: n >= 1, ">= 1"),
          "probe_share": (lambda n: n >= 0, ">= 0 (0: probe every token)"),
          "lipschitz_eps": (lambda eps: eps > 0, "> 0")}


Mlp = Callable[[torch.Tensor], torch.Tensor]  # F(h) = MLP(RMSNorm2(h)), [..., hidden] -> [..., hidden]


def probe_tokens(calibration_tokens: int | None, probed_units: int, options: dict) -> int:
    """Tokens each probe uses: one MLP token-pass per `probe_share` calibration tokens, shared by the
    gains (probed_units passes per token; 0 unless lipschitz="directional") and L (one), at least
    MIN_PROBE_TOKENS, at most `lipschitz_tokens`: the probes cost a fixed share of the pass at every
    calibration size (calibration_tokens None, or probe_share 0: lipschitz_tokens)."""
    most, share = options["lipschitz_tokens"], options["probe_share"]
    if calibration_tokens is None or share == 0:
        return most
    return min(most, max(MIN_PROBE_TOKENS, -(-calibration_tokens // (share * (probed_units + 1)))))


# ---- the probes: pure functions of the probed tokens and the block's MLP output F there --------------
def directional_change(f_h: torch.Tensor, f_moved: torch.Tensor, delta: torch.Tensor,
                       weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t w_t ||Delta y_tg||, sum_t w_t ||delta_tg||) per unit, Delta y_tg = delta_tg + F(h_t) - F(h_t - delta_tg):
    the block-output change of removing unit g at token t, through the MLP.

    f_h = F(h) [k, hidden] at the probed tokens (the block's own MLP output); f_moved = F(h - delta)
    [units, k, hidden] (of `removed(h, delta)`); delta: [units, k, hidden] float32; weight [k]: how many
    tokens each probed token stands for (PROBE_SAMPLING)."""
    change = delta + f_h.float()[None] - f_moved.float()  # [units, k, hidden]
    return change.norm(dim=-1) @ weight, delta.norm(dim=-1) @ weight


def removed(h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """h - delta [units, k, hidden] in h's dtype: the probed tokens without each unit's change."""
    return (h.float()[None] - delta).to(h.dtype)


def lipschitz_ratios(h: torch.Tensor, moved: torch.Tensor, f_h: torch.Tensor, f_moved: torch.Tensor) -> torch.Tensor:
    """||F(h + e) - F(h)|| / ||e|| per token; h, moved = h + e, f_h = F(h), f_moved = F(h + e): [k, hidden]
    (the model's dtype; e as the model's dtype rounded it)."""
    e = moved.float() - h.float()
    return (f_moved.float() - f_h.float()).norm(dim=-1) / e.norm(dim=-1)


# ---- which tokens the gain probe measures: (indices [k], weights [k]) among a batch's, F(h) [tokens, hidden] ---------
OUTLIER_FACTOR = 5.0  # "stratified": ||F(h_t)|| above this many batch medians puts token t in the outlier stratum
OUTLIER_SHARE = 0.25  # "stratified": the most of a probe's tokens the outlier stratum takes (at least one)


def random_pick(f: torch.Tensor, wanted: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`wanted` tokens drawn at random, each standing for itself."""
    picked = torch.randperm(len(f), generator=generator)[:wanted]
    return picked, torch.ones(len(picked))


def outlier_tokens(f: torch.Tensor) -> torch.Tensor:
    """Where the MLP writes an outlier: ||F(h_t)|| above OUTLIER_FACTOR batch medians, bool [tokens] on the CPU
    (f = F(h) [tokens, hidden])."""
    f_norm = torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32)
    return (f_norm > OUTLIER_FACTOR * f_norm.median()).cpu()


def stratified_pick(f: torch.Tensor, wanted: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two strata drawn at random apart: the tokens where the MLP writes an outlier (||F(h_t)|| above
    OUTLIER_FACTOR batch medians: the massive activations a few blocks write at the first position), with up
    to OUTLIER_SHARE of the probe, and the rest; each probed token stands for its stratum's size over its
    sample's. Where an outlier token's change dominates the block's (the default model's layer 11: 8 tokens
    in 1024 carry 56% of it), a random draw mostly misses them and the gain varies by 100% between draws;
    this by a few percent."""
    tokens = len(f)
    if wanted >= tokens:
        return torch.arange(tokens), torch.ones(tokens)
    outlier = outlier_tokens(f)
    strata = [outlier.nonzero()[:, 0], (~outlier).nonzero()[:, 0]]
    from_outliers = max(min(len(strata[0]), max(1, int(wanted * OUTLIER_SHARE))), wanted - len(strata[1]))
    picks, weights = [], []
    for members, n in zip(strata, (from_outliers, wanted - from_outliers)):
        if n > 0:
            picks.append(members[torch.randperm(len(members), generator=generator)[:n]])
            weights.append(torch.full((n,), len(members) / n))
    return torch.cat(picks), torch.cat(weights)


PROBE_SAMPLING = {"random": random_pick, "stratified": stratified_pick}


def mlp_together(mlp: Mlp, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[mlp(x) for x in inputs] ([..., hidden] each) in one call over all their tokens: one set of
    larger matrix products instead of several small ones."""
    rows = [x.reshape(-1, x.shape[-1]) for x in inputs]
    out = mlp(torch.cat(rows)).split([len(r) for r in rows])
    return [y.reshape(x.shape) for y, x in zip(out, inputs)]


def random_directions(h: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Random e [k, hidden] (float32, on h's device) with ||e_t|| = eps * ||h_t||."""
    e = torch.randn(h.shape, generator=generator).to(h.device)
    return e * (eps * h.float().norm(dim=-1, keepdim=True) / e.norm(dim=-1, keepdim=True))


class Stats(LayerStats):
    def __init__(self, model, index, unit, options, seed):
        super().__init__(model, index, unit, options, seed)
        g = self.geometry
        self.units = g.num_units(unit)
        self.unit_width = len(g.unit_heads(unit, 0)[0]) * g.head_dim if self.units else 0  # channels per unit
        order = unit_query_heads(g, unit)
        self.head_order = None if order == list(range(g.num_attention_heads)) else torch.tensor(order)
        self.gram = None  # [units, unit_width, unit_width]
        self.batch_o_input: torch.Tensor | None = None  # this batch's sum of z over tokens [1, heads*head_dim]
        self.centred = options["aggregation"] == "std"
        self.unit_moments = RunningMoments(covariance=True)  # of z_tg, for "std"
        self.channel_moments = RunningMoments()  # of m_tj, for "std"
        self.lipschitz_ratios: list[torch.Tensor] = []
        self.directional = options["lipschitz"] == "directional"
        self.gain_sums = torch.zeros(2, self.units)  # sum_t ||Delta y_tg||, sum_t ||delta_tg|| on probed tokens
        self.gain_tokens = 0
        self.generator = layer_generator(seed, index)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        """F(h) = MLP(RMSNorm2(h)) of this block, run without feeding any taps."""
        with self.muted():
            return self.parts.mlp(self.parts.post_norm(h))

    def on_block(self, taps: BlockTaps) -> None:
        super().on_block(taps)  # unit and channel statistics (on_o_input, on_down_input below)
        probes = [self.probe_gains(taps.z, taps.h, taps.f) if self.directional and self.units else None,
                  self.probe_lipschitz(taps.h, taps.f)]
        probes = [p for p in probes if p is not None]
        if probes:  # both probes in one MLP pass
            for (_, record), f_moved in zip(probes, mlp_together(self.mlp, [moved for moved, _ in probes])):
                record(f_moved)

    # ---- attention: mean_t ||W_g z_tg|| ----------------------------------------------------------
    def unit_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """[tokens, heads*head_dim] -> [units, tokens, unit_width] (a unit's heads side by side)."""
        g = self.geometry
        heads = z.reshape(z.shape[0], g.num_attention_heads, g.head_dim)
        if self.head_order is not None:
            heads = heads[:, self.head_order.to(z.device)]
        return heads.reshape(z.shape[0], self.units, self.unit_width).transpose(0, 1)

    def unit_outputs(self, z_units: torch.Tensor) -> torch.Tensor:
        """W_g z_tg, each unit's share of o_proj's output: [units, tokens, unit_width] float32 -> [units, tokens,
        hidden], a block of o_proj's rows at a time (weight_rows)."""
        return torch.cat([z_units @ self.unit_inputs(rows.to(z_units.device)).transpose(1, 2)
                          for rows in weight_rows(self.parts.o_proj)], dim=-1)

    def unit_grams(self, device) -> torch.Tensor:
        if self.gram is None:  # G_g = W_g^T W_g, summed in place over blocks of o_proj's rows
            gram = torch.zeros(self.units, self.unit_width, self.unit_width, device=device)
            for rows in weight_rows(self.parts.o_proj):  # [rows, heads*head_dim]
                add_outer_upper(gram, self.unit_inputs(rows.to(device)))  # [units, rows, unit_width]
            self.gram = mirror_upper(gram)
        return self.gram

    def on_o_input(self, z):
        z = z.float()  # once, for the sum and the moments
        total = self.batch_o_input = super().on_o_input(z)  # [1, heads*head_dim]; the probe's centre too
        if not self.units:  # attention pruned away
            return total
        z_units = self.unit_inputs(z)  # [units, tokens, unit_width]
        if self.centred:
            self.unit_moments.add(z_units, self.unit_inputs(total))
            return total
        gram = self.unit_grams(z.device)
        delta_sq = ((z_units @ gram) * z_units).sum(-1)  # ||delta_tg||^2  [units, tokens]
        self.add("delta_norm", delta_sq.clamp_min(0).sqrt().sum(1))
        return total

    # ---- channels: mean_t |m_tj| --------------------------------------------------------------------
    def on_down_input(self, m):
        aggregation = self.options["aggregation"]
        if aggregation == "std":  # the moments sum m in the same read as its squares
            return super().on_down_input(m, self.channel_moments.add(m))
        if aggregation == "rms":  # the sum and the squares from one read of m
            total, squares = centred_column_sums(m, 0.0)
            self.add("squared_m", squares[0])  # sum_t m_tj^2
            return super().on_down_input(m, total)
        self.add("abs_m", column_sum_of_abs(m)[0])  # sum_t |m_tj|
        return super().on_down_input(m)  # [1, intermediate]

    # ---- the probes, on a few seeded tokens of the first batches --------------------------------------
    def probe_tokens(self) -> int:
        return probe_tokens(self.planned_tokens, self.units if self.directional else 0, self.options)

    def probe_gains(self, z: torch.Tensor, h: torch.Tensor, f: torch.Tensor):
        """"directional": the MLP's gain along each unit's own change (delta centred on the batch mean
        for "std", i.e. with the mean put back as compensation does). Returns (MLP inputs h - delta,
        record(F of them)), or None once enough tokens were probed."""
        wanted = self.probe_tokens() - self.gain_tokens
        if wanted <= 0:
            return None
        z_units = self.unit_inputs(z.float())  # [units, tokens, unit_width]
        sampling = PROBE_SAMPLING[self.options["probe_sampling"]]
        picked, weight = sampling(f, wanted, self.generator)
        picked, weight = picked.to(z.device), weight.to(z.device)
        centre = self.unit_inputs(self.batch_o_input) / len(z) if self.centred else 0.0  # the batch mean
        delta = self.unit_outputs(z_units[:, picked] - centre)  # [units, k, hidden]
        f_picked = f[picked]

        def record(f_moved: torch.Tensor) -> None:
            change, size = directional_change(f_picked, f_moved, delta, weight)
            self.gain_sums += torch.stack([change, size]).cpu()
            self.gain_tokens += len(picked)
        return removed(h[picked], delta), record

    def probe_lipschitz(self, h: torch.Tensor, f: torch.Tensor):
        """L_l: ||F(h+e) - F(h)|| / ||e|| on a few tokens. Returns (MLP inputs h + e, record(F of them)),
        or None once enough tokens were probed."""
        wanted = self.probe_tokens() - sum(len(r) for r in self.lipschitz_ratios)
        if wanted <= 0:
            return None
        picked = random_pick(h, wanted, self.generator)[0].to(h.device)
        h_picked, f_picked = h[picked], f[picked]
        e = random_directions(h_picked, self.options["lipschitz_eps"], self.generator)
        moved = h_picked + e.to(h.dtype)

        def record(f_moved: torch.Tensor) -> None:
            self.lipschitz_ratios.append(lipschitz_ratios(h_picked, moved, f_picked, f_moved).cpu())
        return moved, record

    def unit_gains(self) -> torch.Tensor:  # [units]
        return self.gain_sums[0] / self.gain_sums[1].clamp_min(1e-30)

    def lipschitz_estimate(self) -> float:
        if not self.lipschitz_ratios:
            return 0.0
        return torch.quantile(torch.cat(self.lipschitz_ratios), self.options["lipschitz_quantile"]).item()

    def unit_change(self) -> torch.Tensor:  # [units]
        if not self.units:  # attention pruned away
            return torch.zeros(0)
        if self.centred:  # sqrt(mean_t ||delta_tg - mean_t delta_tg||^2) = sqrt(trace(G_g Cov(z_g)))
            gram = self.unit_grams("cpu").cpu()
            return (gram * self.unit_moments.variance()).sum((1, 2)).clamp_min(0).sqrt()
        return self.mean("delta_norm")  # mean_t ||delta_tg||

    def channel_activity(self) -> torch.Tensor:  # [intermediate]
        aggregation = self.options["aggregation"]
        if aggregation == "std":
            return self.channel_moments.variance().sqrt()  # std_t(m_tj)
        if aggregation == "mean_abs":
            return self.mean("abs_m")  # mean_t |m_tj|
        return self.mean("squared_m").sqrt()  # rms_t(m_tj)

    def finish(self):
        out = super().finish()
        estimate = self.lipschitz_estimate()
        lipschitz = estimate if self.options["lipschitz"] == "measured" else 0.0
        column_norm = weight_sums(self.parts.down_proj, torch.square, 0).sqrt().cpu()  # ||W_down[:, j]||_2
        if self.directional and self.units:
            out["unit_gain"] = self.unit_gains()
            out["attention"] = out["unit_gain"] * self.unit_change()
        else:
            out["attention"] = (1 + lipschitz) * self.unit_change()
        out["mlp"] = column_norm * self.channel_activity()
        out["lipschitz"] = lipschitz
        out["lipschitz_estimate"] = estimate
        return out

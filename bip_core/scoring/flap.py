"""FLAP (An et al. 2024; reference: CASIA-IVA-Lab/FLAP lib/prune.py, metric "WIFV").

Weighted input feature variance of the input channel j of o_proj / down_proj:

    WIFV_j = var_t(X_tj) * ||W[:, j]||_2^2

    mlp channel j      = WIFV_j of down_proj
    attention unit g   = mean over the unit's o_proj channels of WIFV_j^2   (squared again, as the
                         reference does for o_proj)

The reference then standardises each layer's scores, (s - mean) / std over *channels*, and ranks
all layers together with a head weighing head params / channel params. Standardising is the plan's
job; since the reference standardises o_proj channels before averaging them per head, each layer
also records `standardisation`: {"attention": [mean, std], "mlp": [mean, std]} of the channel
scores (std unbiased, like torch.std), and (s_unit - mean) / std is then exactly the reference's
head score. Bias compensation uses `o_input_mean` / `down_input_mean` (recorded by every
calibrated method).
"""
from __future__ import annotations

import torch

from ..calibration import LayerStats, RunningMoments, weight_sums
from .units import per_unit

PASS = "forward"
DEFAULTS: dict = {}
CHOICES: dict = {}


def mean_and_std(scores) -> list[float]:
    """[mean, unbiased std] of a layer's channel scores ([0, 0] where there are too few)."""
    if scores.numel() < 2:
        return [scores.sum().item(), 0.0]
    return [scores.mean().item(), scores.std().item()]


class Stats(LayerStats):
    def __init__(self, model, index, unit, options, seed):
        super().__init__(model, index, unit, options, seed)
        self.o_moments, self.down_moments = RunningMoments(), RunningMoments()

    def on_o_input(self, z):
        return super().on_o_input(z, self.o_moments.add(z))

    def on_down_input(self, m):
        return super().on_down_input(m, self.down_moments.add(m))

    def finish(self):
        out = super().finish()
        o_wifv = self.o_moments.variance(unbiased=True) * weight_sums(self.parts.o_proj, torch.square, 0).cpu()
        down_wifv = self.down_moments.variance(unbiased=True) * weight_sums(self.parts.down_proj, torch.square, 0).cpu()
        o_score = o_wifv ** 2  # [heads*head_dim]
        out["attention"] = per_unit(o_score, self.geometry, self.unit, reduce="mean")
        out["mlp"] = down_wifv
        out["standardisation"] = {"attention": mean_and_std(o_score), "mlp": mean_and_std(down_wifv)}
        return out

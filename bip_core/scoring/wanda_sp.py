"""Wanda-sp (structured Wanda as in FLAP's reference code, CASIA-IVA-Lab/FLAP lib/prune.py).

Input channel j of o_proj / down_proj, X_j its activations over all calibration tokens:

    s_j = mean_i |W_ij| * ||X_j||_2

    mlp channel j     = s_j of down_proj
    attention unit g  = sum of s_j over the unit's o_proj channels

(The reference divides ||X_j||^2 by the number of sequences; that constant does not change any
ranking.)
"""
from __future__ import annotations

import torch

from ..calibration import LayerStats, centred_column_sums, weight_sums
from .units import per_unit

PASS = "forward"
DEFAULTS: dict = {}
CHOICES: dict = {}


def column_scores(linear, squared_input_norm: torch.Tensor) -> torch.Tensor:
    """mean_i |W_ij| * ||X_j||_2 for every input channel j."""
    return weight_sums(linear, torch.abs, 0).cpu() / linear.weight.shape[0] * squared_input_norm.sqrt()


class Stats(LayerStats):
    def on_o_input(self, z):
        total, squares = centred_column_sums(z, 0.0)  # the sum and ||X_j||^2 from one read of z
        self.add("o_input_sq", squares[0])
        return super().on_o_input(z, total)

    def on_down_input(self, m):
        total, squares = centred_column_sums(m, 0.0)
        self.add("down_input_sq", squares[0])
        return super().on_down_input(m, total)

    def finish(self):
        out = super().finish()
        o_scores = column_scores(self.parts.o_proj, self.sums["o_input_sq"].cpu())
        out["attention"] = per_unit(o_scores, self.geometry, self.unit)
        out["mlp"] = column_scores(self.parts.down_proj, self.sums["down_input_sq"].cpu())
        return out

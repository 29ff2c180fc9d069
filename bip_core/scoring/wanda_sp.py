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

from ..calibration import LayerStats, column_sum_of_squares, weight_sums
from .units import per_unit

PASS = "forward"
DEFAULTS: dict = {}
CHOICES: dict = {}


def column_scores(linear, squared_input_norm: torch.Tensor) -> torch.Tensor:
    """mean_i |W_ij| * ||X_j||_2 for every input channel j."""
    return weight_sums(linear, torch.abs, 0).cpu() / linear.weight.shape[0] * squared_input_norm.sqrt()


class Stats(LayerStats):
    def on_o_input(self, z):
        super().on_o_input(z)
        self.add("o_input_sq", column_sum_of_squares(z)[0])  # ||X_j||^2

    def on_down_input(self, m):
        super().on_down_input(m)
        self.add("down_input_sq", column_sum_of_squares(m)[0])

    def finish(self):
        out = super().finish()
        o_scores = column_scores(self.parts.o_proj, self.sums["o_input_sq"].cpu())
        out["attention"] = per_unit(o_scores, self.geometry, self.unit)
        out["mlp"] = column_scores(self.parts.down_proj, self.sums["down_input_sq"].cpu())
        return out

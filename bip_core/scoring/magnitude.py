"""Magnitude: the size of the weights a unit owns, no data.

weights="coupled" (LLM-Pruner l1 / l2): the p-norm of all weights removed with the unit,
    attention unit g = ||(q rows, k and v rows if removed, o columns of g)||_p
    mlp channel j    = ||(gate row j, up row j, down column j)||_p
weights="output" (FLAP's mag-sp): the column norms of the output projections,
    mlp channel j    = ||W_down[:, j]||_p
    attention unit g = sum over g's o_proj columns j of ||W_O[:, j]||_p
"""
from __future__ import annotations

from ..calibration import LayerStats, weight_sums
from .units import per_unit

PASS = "weights"
DEFAULTS = {"norm": "l2", "weights": "coupled"}
CHOICES = {"norm": ("l1", "l2"), "weights": ("coupled", "output")}


class Stats(LayerStats):
    def finish(self):
        p = 1 if self.options["norm"] == "l1" else 2
        parts = self.parts

        def rows(linear):  # sum_i |W_ji|^p per output channel j
            return weight_sums(linear, lambda w: w.abs().pow(p), 1).cpu()

        def columns(linear):  # sum_i |W_ij|^p per input channel j
            return weight_sums(linear, lambda w: w.abs().pow(p), 0).cpu()

        if self.options["weights"] == "output":
            attention = per_unit(columns(parts.o_proj) ** (1 / p), self.geometry, self.unit)
            return {"attention": attention, "mlp": columns(parts.down_proj) ** (1 / p)}
        attention = per_unit(rows(parts.q_proj) + columns(parts.o_proj), self.geometry, self.unit,
                             kv_values=rows(parts.k_proj) + rows(parts.v_proj))
        mlp = rows(parts.gate_proj) + rows(parts.up_proj) + columns(parts.down_proj)
        return {"attention": attention ** (1 / p), "mlp": mlp ** (1 / p)}

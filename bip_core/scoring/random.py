"""Random scores: uniform in [0, 1), seeded per (seed, layer), no data."""
from __future__ import annotations

import torch

from ..calibration import LayerStats
from .seeds import layer_generator

PASS = "weights"
DEFAULTS: dict = {}
CHOICES: dict = {}


class Stats(LayerStats):
    def finish(self):
        generator = layer_generator(self.seed, self.index)
        return {"attention": torch.rand(self.geometry.num_units(self.unit), generator=generator),
                "mlp": torch.rand(self.geometry.intermediate_size, generator=generator)}

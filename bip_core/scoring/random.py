"""Random scores: uniform in [0, 1), seeded per (seed, layer), no data."""
from __future__ import annotations

import torch

from ..calibration import LayerStats

PASS = "weights"
DEFAULTS: dict = {}
CHOICES: dict = {}


class Stats(LayerStats):
    def finish(self):
        generator = torch.Generator().manual_seed(int(self.seed) * 100_003 + self.index)
        return {"attention": torch.rand(self.geometry.num_units(self.unit), generator=generator),
                "mlp": torch.rand(self.geometry.intermediate, generator=generator)}

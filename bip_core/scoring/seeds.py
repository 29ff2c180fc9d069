"""The random generator of one layer: the same numbers for the same (seed, layer), whatever the method."""
from __future__ import annotations

import torch


def layer_seed(seed: int, index: int) -> int:
    """The seed of layer `index` under the run's `seed` (distinct per layer for any seed < 100_003 layers)."""
    return int(seed) * 100_003 + index


def layer_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded with `layer_seed(seed, index)`."""
    return torch.Generator().manual_seed(layer_seed(seed, index))

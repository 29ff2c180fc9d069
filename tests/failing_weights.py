"""A folder's weights that fail like a disk error when one decoder layer is read (atomic-write tests)."""
from __future__ import annotations


class FailingWeights:
    """Wraps opened weights (bip_core.weights); `get` raises OSError for every tensor of layer `layer`."""

    def __init__(self, weights, layer: int):
        self.inner, self.prefix = weights, f"model.layers.{layer}."

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __contains__(self, name):
        return name in self.inner

    def get(self, name, device=None, dtype=None):
        if name.startswith(self.prefix):
            raise OSError("read error")
        return self.inner.get(name, device, dtype)

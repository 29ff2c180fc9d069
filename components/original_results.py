"""Measurements of the shared original models (perplexity, zero-shot), computed once for every session.

Owned by the studio context (components.context), bounded (the least recently used entries go past
`keep`), and emptied for a model when the model store evicts it, so it never outlives the model nor
grows with the number of settings users try.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable


class OriginalResults:
    def __init__(self, keep: int = 64):
        self.keep = keep
        self._values: OrderedDict[tuple, object] = OrderedDict()
        self._generation: dict[str, int] = {}  # bumped when a model is evicted: late results are not kept
        self._lock = threading.Lock()

    def get(self, spec: str, key: tuple, compute: Callable[[], object]):
        """The cached measurement of original `spec` under `key`, computing it on first use."""
        full = (spec, *key)
        with self._lock:
            if full in self._values:
                self._values.move_to_end(full)
                return self._values[full]
            generation = self._generation.get(spec, 0)
        value = compute()
        with self._lock:
            if self._generation.get(spec, 0) == generation:
                self._values[full] = value
                while len(self._values) > self.keep:
                    self._values.popitem(last=False)
        return value

    def drop(self, spec: str) -> None:
        """Forget every measurement of `spec` (the model store evicted it)."""
        with self._lock:
            self._generation[spec] = self._generation.get(spec, 0) + 1
            for full in [k for k in self._values if k[0] == spec]:
                del self._values[full]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

"""Numbers as people read them: parameter counts as '135.0M' or '1.24B'."""
from __future__ import annotations


def format_params(n, digits: int = 1) -> str:
    """A count in millions with `digits` decimals, or in billions with one more; '?' for None."""
    if n is None:
        return "?"
    return f"{n / 1e9:.{digits + 1}f}B" if n >= 1e9 else f"{n / 1e6:.{digits}f}M"


__all__ = ["format_params"]

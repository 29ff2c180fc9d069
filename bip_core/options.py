"""KEY=VALUE method options, as the CLI (`--option norm=l1`) and sweep labels (`bip:aggregation=rms`) give them."""
from __future__ import annotations

from .errors import BipError


def parse_options(items, where: str, example: str) -> dict[str, str]:
    """['aggregation=rms', 'lipschitz=zero'] -> {'aggregation': 'rms', 'lipschitz': 'zero'} (stripped).
    BipError naming `where` and an `example` for an item that is not KEY=VALUE."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BipError(f"{where}: option '{item}' is not KEY=VALUE (e.g. {example}).")
        options[key.strip()] = value.strip()
    return options


__all__ = ["parse_options"]

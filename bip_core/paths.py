"""Where BIP Studio keeps its caches: converted models, extracted datasets, offline tasks.

Everything lives under one folder, `$BIP_CACHE` (default `~/.cache/bip-studio`).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("BIP_CACHE", Path.home() / ".cache" / "bip-studio")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir() -> Path:
    d = cache_dir() / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d

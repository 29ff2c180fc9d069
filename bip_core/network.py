"""Fail fast when the Hugging Face Hub is out of reach, instead of hanging on a download.

`require_hub(what)` is called before any online load (Hub model ids, WikiText-2, PTB, C4, standard
lm-eval tasks). It honours `HF_HUB_OFFLINE=1` and otherwise probes the Hub's host with a short
timeout, in a worker thread so that even a stuck DNS lookup cannot block the caller.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from .errors import OfflineError

HUB_HOST = "huggingface.co"
REACHABLE_TTL_S = 60.0  # how long a probe's answer holds: a server that starts offline sees the Hub come back
_reachable: tuple[bool, float] | None = None  # (answer, time.monotonic() of the probe)


def _probe(host: str, timeout: float) -> bool:
    result = [False]

    def connect():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0]


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub answers. The answer is kept for `REACHABLE_TTL_S` seconds, then probed again;
    `HF_HUB_OFFLINE=1` forces False."""
    global _reachable
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    now = time.monotonic()
    if _reachable is None or now - _reachable[1] >= REACHABLE_TTL_S:
        _reachable = (_probe(os.environ.get("BIP_HUB_HOST", HUB_HOST), timeout), now)
    return _reachable[0]


def require_hub(what: str) -> None:
    if not hub_reachable():
        raise OfflineError(
            f"{what} needs the Hugging Face Hub, which cannot be reached from this machine. "
            "Use an offline alternative instead: the model 'default' or a local folder, and the "
            "data source 'wiki-bb' or 'file:PATH'."
        )

"""Serving settings read from the environment, for local use and public deployments (HF Spaces).

  BIP_ALLOWED_MODELS  comma-separated model specs a user may load (unset: any spec; the picker then
                      also accepts a local folder or a Hub id typed by the user)
  BIP_MAX_PARAMS      largest model (total parameters) a user may load, e.g. 500M, 2B, 1.5e9
  BIP_CONCURRENCY     heavy jobs (scoring, pruning, evaluation, generation) run at once (default 1)
  BIP_SESSION_TTL     seconds an idle session keeps its models before they are freed (default 7200)
  BIP_MAX_SAMPLES     upper bound of calibration samples offered in the UI (default 256)
  BIP_MAX_WINDOWS     upper bound of perplexity windows offered in the UI (default 512)
  BIP_DEVICE          where models compute: auto (CUDA when available, default), cpu, cuda, cuda:N
  BIP_DTYPE           weights' dtype: auto (bfloat16 on a GPU that supports it, else float32, default),
                      float32, bfloat16, float16
  BIP_HOST, BIP_PORT  where `python app.py` serves (default 127.0.0.1:7860, or GRADIO_SERVER_NAME /
                      GRADIO_SERVER_PORT, which a Hugging Face Space sets to 0.0.0.0:7860)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str | None) -> int | None:
    """'500M' -> 500_000_000, '1.5e9' -> 1_500_000_000, '' or None -> None."""
    text = (text or "").strip().upper().replace("_", "")
    if not text:
        return None
    factor = 1.0
    if text[-1] in _SUFFIX:
        factor, text = _SUFFIX[text[-1]], text[:-1]
    try:
        value = int(float(text) * factor)
    except ValueError as err:
        raise ValueError(f"cannot read a parameter count from {text!r}: use e.g. 500M, 2B or 1.5e9") from err
    return value if value > 0 else None


def _int(name: str, default: int, low: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return max(low, int(raw)) if raw else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Settings:
    allowed_models: tuple[str, ...] | None
    max_params: int | None
    concurrency: int
    session_ttl: int
    max_samples: int
    max_windows: int
    host: str
    port: int
    device: str = "auto"
    dtype: str = "auto"

    @property
    def public(self) -> bool:
        """An allow-list means a public deployment: users cannot type arbitrary specs."""
        return self.allowed_models is not None


def _device_and_dtype() -> tuple[str, str]:
    """BIP_DEVICE / BIP_DTYPE, checked now so a bad value stops the server at start with a clear message."""
    from bip_core.devices import resolve_device, resolve_dtype

    device = os.environ.get("BIP_DEVICE", "").strip() or "auto"
    dtype = os.environ.get("BIP_DTYPE", "").strip() or "auto"
    resolve_dtype(dtype, resolve_device(device))
    return device, dtype


def from_env() -> Settings:
    device, dtype = _device_and_dtype()
    allowed = os.environ.get("BIP_ALLOWED_MODELS", "").strip()
    models = tuple(m.strip() for m in allowed.split(",") if m.strip()) if allowed else None
    return Settings(
        allowed_models=models or None,
        max_params=parse_count(os.environ.get("BIP_MAX_PARAMS")),
        concurrency=_int("BIP_CONCURRENCY", 1),
        session_ttl=_int("BIP_SESSION_TTL", 7200, low=60),
        max_samples=_int("BIP_MAX_SAMPLES", 256),
        max_windows=_int("BIP_MAX_WINDOWS", 512),
        host=os.environ.get("BIP_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        port=_int("BIP_PORT", _int("GRADIO_SERVER_PORT", 7860)),
        device=device,
        dtype=dtype,
    )

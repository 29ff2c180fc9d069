"""Original models, loaded once per spec and shared read-only by every session.

bip_core never modifies a loaded model (scoring reads it, surgery builds a new one), so one copy of
each original serves all sessions. The serving policy lives here: the allow-list and the size cap
of components.settings are checked before anything is loaded.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

from bip_core.architecture import count_params
from bip_core.errors import ModelSpecError
from bip_core.formatting import format_params

from .settings import Settings


def _params_from_config(folder: Path) -> int | None:
    """Parameter count of a local folder's config, built on the meta device (no memory used)."""
    if not (folder / "config.json").is_file():
        return None
    try:
        raw = json.loads((folder / "config.json").read_text())
        if "bip_studio" in raw:  # an export: its config describes the unpruned shape
            return None
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return count_params(model)["total"]
    except Exception:  # an unreadable config is reported by the loader itself
        return None


class ModelStore:
    """spec -> LoadedModel, loaded once (per-spec lock), least recently used dropped past `keep`.

    Dropping an entry only forgets the store's reference: sessions that hold the model keep it alive
    until they end.
    """

    def __init__(self, settings: Settings, keep: int = 2, loader=None):
        self.settings = settings
        self.keep = keep
        self._loader = loader
        self._models: OrderedDict[str, object] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._on_evict: list = []

    def on_evict(self, callback) -> None:
        """Call `callback(spec)` whenever a model leaves the store (caches about it must go too)."""
        self._on_evict.append(callback)

    def choices(self) -> list[str]:
        return list(self.settings.allowed_models) if self.settings.allowed_models else ["default"]

    def check_allowed(self, spec: str) -> str:
        spec = (spec or "").strip()
        if not spec:
            raise ModelSpecError("No model given. Pick 'default' or type a local folder or a Hub id (org/name).")
        allowed = self.settings.allowed_models
        if allowed is not None and spec not in allowed:
            raise ModelSpecError(
                f"'{spec}' is not available on this server. Models you can load here: {', '.join(allowed)}.")
        cap = self.settings.max_params
        if cap is not None:
            path = Path(spec).expanduser()
            estimate = _params_from_config(path) if path.is_dir() else None
            if estimate is not None and estimate > cap:
                raise ModelSpecError(self._too_big(spec, estimate))
        return spec

    def _too_big(self, spec: str, params: int) -> str:
        return (f"'{spec}' has {format_params(params)} parameters; this server accepts models up to "
                f"{format_params(self.settings.max_params)} (BIP_MAX_PARAMS). Pick a smaller model.")

    def get(self, spec: str):
        """The shared LoadedModel for `spec` (loading it on first use)."""
        spec = self.check_allowed(spec)
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            lock = self._locks.setdefault(spec, threading.Lock())
        with lock:  # two sessions asking for the same new model load it once
            with self._lock:
                if spec in self._models:
                    return self._models[spec]
            loaded = self._load(spec)
            cap = self.settings.max_params
            if cap is not None:
                total = count_params(loaded.model)["total"]
                if total > cap:
                    del loaded
                    raise ModelSpecError(self._too_big(spec, total))
            with self._lock:
                self._models[spec] = loaded
                evicted = []
                while len(self._models) > self.keep:
                    evicted.append(self._models.popitem(last=False)[0])
            for old in evicted:
                for callback in self._on_evict:
                    callback(old)
            return loaded

    def _load(self, spec: str):
        if self._loader is not None:
            return self._loader(spec)
        from bip_core.loading import load_model

        # the app chats and evaluates: the whole model, or the memory guard's readable refusal
        return load_model(spec, device=self.settings.device, dtype=self.settings.dtype, pipeline="whole")

    def loaded_specs(self) -> list[str]:
        with self._lock:
            return list(self._models)

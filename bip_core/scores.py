"""The scores file: one importance per attention unit and per MLP channel of every decoder layer.

Other tools read it (plans, the app, sweeps); keep it stable. JSON layout:

    {"layers": [                                  one entry per decoder layer, in order
        {"attention": [float, ...],               one per attention unit, unit order
         "mlp": [float, ...],                     one per MLP channel, channel order
         optional:
         "lipschitz": float,                      bip: L_l used in the attention score (0 with lipschitz="zero")
         "lipschitz_estimate": float,             bip: the measured L_l, whether used or not
         "unit_gain": [float, ...],               bip, lipschitz="directional": attention factor per unit
         "output_scale": float,                   mean_t ||y_t||_2 of the block output
         "o_input_mean": [float, ...],            mean input of o_proj [heads*head_dim]
         "down_input_mean": [float, ...],         mean input of down_proj [intermediate]
         "standardisation": {"attention": [mean, std], "mlp": [mean, std]}
                                                  flap: channel-score statistics to standardise with
        }, ...],
     "meta": {"format": 1, "method", "model", "source", "samples", "seq_len", "seed", "unit",
              "seconds", "peak_memory_bytes", "peak_memory_kind", "memory_at_start_bytes",
              "tokens", "batch_size",
              "geometry": [{"heads", "kv_heads", "head_dim", "intermediate", "hidden"}, ...],
              "options": {...}}}

Higher score = more important (keep). Methods without calibration data (random, magnitude) record
source "none", samples 0 and seq_len 0.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .architecture import UNIT_KINDS, LayerGeometry, model_geometry
from .errors import ScoresError

FORMAT = 1


def geometry_record(geometries: list[LayerGeometry]) -> list[dict]:
    return [{"heads": g.num_heads, "kv_heads": g.num_kv_heads, "head_dim": g.head_dim,
             "intermediate": g.intermediate, "hidden": g.hidden} for g in geometries]


def geometry_from_record(record: list[dict]) -> list[LayerGeometry]:
    return [LayerGeometry(num_heads=g["heads"], num_kv_heads=g["kv_heads"], head_dim=g["head_dim"],
                          intermediate=g["intermediate"], hidden=g["hidden"]) for g in record]


def _describe(record: list[dict]) -> str:
    first = record[0] if record else {}
    uniform = all(g == first for g in record)
    shape = (f"{first.get('heads')} heads / {first.get('kv_heads')} kv heads x {first.get('head_dim')}, "
             f"intermediate {first.get('intermediate')}, hidden {first.get('hidden')}") if uniform else "mixed widths"
    return f"{len(record)} layers, {shape}"


def _numbers(values, where: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise ScoresError(f"{where} must be a list of numbers.")
    if not all(math.isfinite(v) for v in values):
        raise ScoresError(f"{where} holds NaN or infinite scores; score the model again.")
    return [float(v) for v in values]


@dataclass
class Scores:
    layers: list[dict]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self._validate()

    # ---- access ---------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.meta.get("method", "")

    @property
    def unit(self) -> str:
        return self.meta.get("unit", "")

    @property
    def geometry(self) -> list[LayerGeometry]:
        return geometry_from_record(self.meta["geometry"])

    def attention(self, layer: int) -> list[float]:
        return self.layers[layer]["attention"]

    def mlp(self, layer: int) -> list[float]:
        return self.layers[layer]["mlp"]

    # ---- checks ---------------------------------------------------------------------------------
    def _validate(self) -> None:
        if not isinstance(self.layers, list) or not self.layers:
            raise ScoresError("Scores need a non-empty list 'layers', one entry per decoder layer.")
        if not isinstance(self.meta, dict):
            raise ScoresError("Scores 'meta' must be an object.")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, dict) or "attention" not in layer or "mlp" not in layer:
                raise ScoresError(f"Scores layer {i} needs 'attention' and 'mlp' lists.")
            layer["attention"] = _numbers(layer["attention"], f"layers[{i}].attention")
            layer["mlp"] = _numbers(layer["mlp"], f"layers[{i}].mlp")
        unit, record = self.meta.get("unit"), self.meta.get("geometry")
        if unit is not None and unit not in UNIT_KINDS:
            raise ScoresError(f"Scores have unknown unit '{unit}'; expected one of {UNIT_KINDS}.")
        if record is None:
            return
        try:
            geometries = geometry_from_record(record)
        except (TypeError, KeyError) as err:
            raise ScoresError(f"Scores meta.geometry is malformed ({err}).") from err
        if len(geometries) != len(self.layers):
            raise ScoresError(f"Scores have {len(self.layers)} layers but their geometry describes {len(geometries)}.")
        for i, (layer, g) in enumerate(zip(self.layers, geometries)):
            if unit is not None and len(layer["attention"]) != g.num_units(unit):
                raise ScoresError(f"Scores layer {i} has {len(layer['attention'])} attention scores; "
                                  f"its geometry has {g.num_units(unit)} units of kind '{unit}'.")
            if len(layer["mlp"]) != g.intermediate:
                raise ScoresError(f"Scores layer {i} has {len(layer['mlp'])} MLP scores; "
                                  f"its geometry has {g.intermediate} channels.")

    def check_matches(self, model) -> None:
        """Raise ScoresError unless `model` has exactly the layer geometry these scores were made for."""
        ours = self.meta.get("geometry")
        theirs = geometry_record(model_geometry(model))
        if ours is None:
            raise ScoresError("These scores record no model geometry, so they cannot be checked against a model; "
                              "score the model again.")
        if ours == theirs:
            return
        where = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise ScoresError(
            f"These scores belong to another model ('{self.meta.get('model', '?')}': {_describe(ours)}); "
            f"this model has {_describe(theirs)} (first difference at layer {where}). "
            "Score this model (python -m bip_core score --model ...) or load the scores made for it.")

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"layers": self.layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, data) -> "Scores":
        if not isinstance(data, dict) or "layers" not in data:
            raise ScoresError("Not a scores file: expected an object with 'layers' and 'meta'.")
        fmt = data.get("meta", {}).get("format", FORMAT)
        if fmt != FORMAT:
            raise ScoresError(f"Scores format {fmt} is not supported (this version reads format {FORMAT}).")
        return cls(layers=data["layers"], meta=data.get("meta", {}))

    def save(self, path) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, allow_nan=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path) -> "Scores":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ScoresError(f"Cannot read scores file {path}: {err}") from err
        except json.JSONDecodeError as err:
            raise ScoresError(f"{path} is not valid JSON ({err}); it is not a scores file.") from err
        return cls.from_dict(data)

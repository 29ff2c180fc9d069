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
         "output_median": float,                  median_t ||y_t||_2 (the lower middle one; calibrated methods
                                                  since 2026-12-03, for allocation's block_scale="mean-median")
         "o_input_mean": [float, ...],            mean input of o_proj [heads*head_dim]
         "down_input_mean": [float, ...],         mean input of down_proj [intermediate]
         "standardisation": {"attention": [mean, std], "mlp": [mean, std]}
                                                  flap: channel-score statistics to standardise with
        }, ...],
     "meta": {"format": 2, "method", "model", "source", "samples", "seq_len", "seed", "unit",
              "seconds", "peak_memory_bytes", "peak_memory_kind", "memory_at_start_bytes",
              "tokens", "batch_size",
              "geometry": [{"num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                            "hidden_size"}, ...],      LayerGeometry.to_record(): the HF config's names
              "options": {...}}}

Higher score = more important (keep). Methods without calibration data (random, magnitude) record
source "none", samples 0 and seq_len 0. Format 1 files (geometry as heads / kv_heads / head_dim /
intermediate / hidden) still load; their geometry is read into the format 2 record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .architecture import UNIT_KINDS, LayerGeometry, check_geometry, geometry_from_record, geometry_record
from .atomic import write_text_atomic
from .errors import ScoresError

FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1: the geometry record in older names (read by geometry_from_record)


def is_centred(method: str, options: dict) -> bool:
    """Scores that measure the change left AFTER bias compensation (FLAP's fluctuation, BIP's "std"
    aggregation) are meant to be used with it: 'auto' compensates exactly those."""
    return method == "flap" or (method == "bip" and options.get("aggregation") == "std")


def has_mean_inputs(scores) -> bool:
    """Whether every layer records the mean inputs bias compensation needs."""
    return all("o_input_mean" in layer and "down_input_mean" in layer for layer in scores.layers)


def recommends_compensation(scores) -> bool:
    """The bias-compensation default ('auto') for these scores: on for centred scores with mean inputs."""
    return is_centred(scores.meta.get("method"), scores.meta.get("options") or {}) and has_mean_inputs(scores)


def _numbers(values, where: str) -> list[float]:
    """values as floats, checked in one numpy conversion (a Llama-2-7B's scores hold 350,000 numbers):
    a flat list of numbers (not strings, lists or nulls; a list of booleans is refused too), all finite."""
    try:
        array = np.array(values) if isinstance(values, list) else None
    except ValueError:  # ragged nested lists
        array = None
    if array is None or array.ndim != 1 or array.dtype.kind not in "iuf":
        raise ScoresError(f"{where} must be a list of numbers.")
    if not np.isfinite(array).all():
        raise ScoresError(f"{where} holds NaN or infinite scores; score the model again.")
    return array.astype(np.float64).tolist()


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
            if len(layer["mlp"]) != g.intermediate_size:
                raise ScoresError(f"Scores layer {i} has {len(layer['mlp'])} MLP scores; "
                                  f"its geometry has {g.intermediate_size} channels.")

    def check_matches(self, model) -> None:
        """Raise ScoresError unless `model` has exactly the layer geometry these scores were made for."""
        if self.meta.get("geometry") is None:
            raise ScoresError("These scores record no model geometry, so they cannot be checked against a model; "
                              "score the model again.")
        check_geometry(self.geometry, model, ScoresError, f"These scores ('{self.meta.get('model', '?')}') were",
                       "Score this model (python -m bip_core score --model ...) or load the scores made for it.")

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"layers": self.layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, data) -> "Scores":
        if not isinstance(data, dict) or "layers" not in data:
            raise ScoresError("Not a scores file: expected an object with 'layers' and 'meta'.")
        meta = dict(data.get("meta", {}))
        fmt = meta.get("format", FORMAT)
        if fmt not in READABLE_FORMATS:
            raise ScoresError(f"Scores format {fmt} is not supported (this version reads formats "
                              f"{', '.join(map(str, READABLE_FORMATS))}); score the model again.")
        scores = cls(layers=data["layers"], meta=meta)
        if fmt != FORMAT and meta.get("geometry") is not None:  # upgrade the record to this format's names
            meta.update(format=FORMAT, geometry=geometry_record(scores.geometry))
        return scores

    def save(self, path) -> Path:
        """Write atomically (a temporary file renamed into place); ScoresError for values JSON cannot hold
        (NaN, infinities, objects), and then the old file stays as it was."""
        try:
            text = json.dumps(self.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ScoresError(f"These scores cannot be written as JSON ({err}): every value must be a finite "
                              "number, a string, a list or a dict. Score the model again.") from err
        return write_text_atomic(path, text)

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

"""Scores with made-up numbers for plan/surgery/export tests (no scoring pass needed)."""
from __future__ import annotations

import numpy as np

from bip_core.architecture import default_unit, model_geometry
from bip_core.scores import FORMAT, Scores, geometry_record


def fake_scores(model, unit: str | None = None, seed: int = 0, means: bool = True, model_name: str = "test",
                **layer_overrides) -> Scores:
    """Random positive scores in the Scores schema for `model`'s geometry; `means` adds the mean inputs of
    o_proj/down_proj used by bias compensation; `layer_overrides` (key -> per-layer list) replace fields."""
    geometry = model_geometry(model)
    unit = unit or default_unit(geometry[0])
    rng = np.random.default_rng(seed)
    layers = []
    for i, g in enumerate(geometry):
        layer = {"attention": rng.random(g.num_units(unit)).tolist(), "mlp": rng.random(g.intermediate_size).tolist(),
                 "output_scale": float(1 + rng.random())}
        if means:
            layer["o_input_mean"] = rng.normal(size=g.num_attention_heads * g.head_dim).tolist()
            layer["down_input_mean"] = rng.normal(size=g.intermediate_size).tolist()
        for key, values in layer_overrides.items():
            layer[key] = values[i]
        layers.append(layer)
    meta = {"format": FORMAT, "method": "random", "model": model_name, "source": "none", "samples": 0, "seq_len": 0,
            "seed": seed, "unit": unit, "geometry": geometry_record(geometry), "options": {}}
    return Scores.from_dict({"layers": layers, "meta": meta})


def permutation_scores(model, unit: str, seed: int = 0) -> Scores:
    """Scores that are a random permutation per layer (all distinct): the top k of a layer are unambiguous."""
    rng = np.random.default_rng(seed)
    geometry = model_geometry(model)
    attention = [rng.permutation(g.num_units(unit)).astype(float).tolist() for g in geometry]
    mlp = [rng.permutation(g.intermediate_size).astype(float).tolist() for g in geometry]
    return fake_scores(model, unit=unit, seed=seed, attention=attention, mlp=mlp)


def tiny_folder_with_scores(tmp_path, family: str):
    """A folder holding only a tiny config (load_model gives its seed-0 random model) and scores.json for it."""
    from bip_core.loading import random_model
    from bip_core.tiny_configs import tiny_config

    folder = tmp_path / "tiny"
    tiny_config(family, gqa=True).save_pretrained(folder)
    fake_scores(random_model(tiny_config(family, gqa=True), seed=0), model_name=str(folder)).save(tmp_path / "scores.json")
    return folder, tmp_path / "scores.json"

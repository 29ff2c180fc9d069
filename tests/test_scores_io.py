"""The scores file: JSON round trip, validation with readable errors, geometry checks."""
from __future__ import annotations

import json

import pytest

from bip_core.errors import ScoresError
from bip_core.loading import random_model
from bip_core.scores import FORMAT, Scores, geometry_record
from bip_core.architecture import model_geometry
from bip_core.tiny_configs import tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config("mistral", gqa=True, layers=2, intermediate=6), seed=0)


def make_scores(model, **meta) -> Scores:
    geometry = model_geometry(model)
    layers = [{"attention": [0.5 + i, 0.25], "mlp": [float(j) for j in range(g.intermediate_size)], "lipschitz": 0.8,
               "output_scale": 3.0, "o_input_mean": [0.0] * (g.num_attention_heads * g.head_dim),
               "down_input_mean": [0.1] * g.intermediate_size} for i, g in enumerate(geometry)]
    return Scores(layers=layers, meta={"format": FORMAT, "method": "bip", "model": "tiny", "source": "wiki-bb",
                                       "samples": 2, "seq_len": 16, "seed": 0, "unit": "kv_group",
                                       "seconds": 0.1, "peak_memory_bytes": 1, "options": {"lipschitz": "measured"},
                                       "geometry": geometry_record(geometry), **meta})


def test_round_trip_through_a_file(model, tmp_path):
    scores = make_scores(model)
    path = scores.save(tmp_path / "sub" / "scores.json")
    loaded = Scores.load(path)
    assert loaded.to_dict() == scores.to_dict()
    assert loaded.attention(1) == [1.5, 0.25] and loaded.mlp(0) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert loaded.method == "bip" and loaded.unit == "kv_group" and loaded.geometry == model_geometry(model)
    raw = json.loads(path.read_text())
    assert set(raw) == {"layers", "meta"} and len(raw["layers"]) == 2
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind
    loaded.check_matches(model)


def test_integers_are_read_as_floats(model):
    d = make_scores(model).to_dict()
    d["layers"][0]["attention"] = [1, 2]
    assert Scores.from_dict(d).attention(0) == [1.0, 2.0]


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.pop("layers"), "Not a scores file"),
    (lambda d: d.update(layers=[]), "non-empty list 'layers'"),
    (lambda d: d["layers"][0].pop("mlp"), "layer 0 needs 'attention' and 'mlp'"),
    (lambda d: d["layers"][1].update(attention=[1.0, "x"]), r"layers\[1\].attention must be a list of numbers"),
    (lambda d: d["layers"][1].update(attention=[True, False]), r"layers\[1\].attention must be a list of numbers"),
    (lambda d: d["layers"][1].update(attention=[1.0, None]), r"layers\[1\].attention must be a list of numbers"),
    (lambda d: d["layers"][1].update(attention=[[1.0], [1.0, 2.0]]), r"attention must be a list of numbers"),
    (lambda d: d["layers"][0].update(mlp={"a": 1.0}), r"layers\[0\].mlp must be a list of numbers"),
    (lambda d: d["layers"][1].update(attention=[1.0, float("nan")]), "NaN or infinite"),
    (lambda d: d["layers"][1].update(attention=[1.0, float("-inf")]), "NaN or infinite"),
    (lambda d: d["layers"][0].update(attention=[1.0]), "1 attention scores; its geometry has 2 units"),
    (lambda d: d["layers"][0].update(mlp=[1.0]), "1 MLP scores; its geometry has 6 channels"),
    (lambda d: d["meta"].update(unit="slot"), "unknown unit 'slot'"),
    (lambda d: d["meta"].update(format=99), "format 99 is not supported"),
    (lambda d: d["meta"]["geometry"].pop(), "2 layers but their geometry describes 1"),
])
def test_malformed_scores_are_refused_clearly(model, corrupt, message):
    d = json.loads(json.dumps(make_scores(model).to_dict()))
    corrupt(d)
    with pytest.raises(ScoresError, match=message):
        Scores.from_dict(d)


def test_unreadable_files(tmp_path):
    with pytest.raises(ScoresError, match="Cannot read scores file"):
        Scores.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScoresError, match="not valid JSON"):
        Scores.load(bad)


def test_check_matches_names_the_difference(model):
    scores = make_scores(model)
    wider = random_model(tiny_config("mistral", gqa=True, layers=2, intermediate=8), seed=0)
    with pytest.raises(ScoresError, match=r"\('tiny'\).*another model geometry.*intermediate 6.*intermediate 8.*layer 0"):
        scores.check_matches(wider)
    no_geometry = Scores(layers=scores.layers, meta={"method": "bip"})
    with pytest.raises(ScoresError, match="record no model geometry"):
        no_geometry.check_matches(model)


def test_save_refuses_nan_and_keeps_the_old_file(model, tmp_path):
    path = make_scores(model).save(tmp_path / "scores.json")
    before = path.read_text()
    scores = make_scores(model)
    scores.layers[0]["output_scale"] = float("nan")
    with pytest.raises(ScoresError, match="cannot be written as JSON"):
        scores.save(path)
    assert path.read_text() == before and list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_format_1_files_still_load_and_are_upgraded(model, tmp_path):
    """Format 1 recorded the geometry as heads / kv_heads / intermediate / hidden."""
    d = make_scores(model).to_dict()
    d["meta"]["format"] = 1
    d["meta"]["geometry"] = [{"heads": g.num_attention_heads, "kv_heads": g.num_key_value_heads, "head_dim": g.head_dim,
                              "intermediate": g.intermediate_size, "hidden": g.hidden_size} for g in model_geometry(model)]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    loaded = Scores.load(path)
    assert loaded.geometry == model_geometry(model)
    assert loaded.meta["format"] == FORMAT and loaded.meta["geometry"] == make_scores(model).meta["geometry"]
    assert set(loaded.meta["geometry"][0]) == {"num_attention_heads", "num_key_value_heads", "head_dim",
                                               "intermediate_size", "hidden_size"}
    loaded.check_matches(model)
    wider = random_model(tiny_config("mistral", gqa=True, layers=2, intermediate=8), seed=0)
    with pytest.raises(ScoresError, match="another model geometry"):
        loaded.check_matches(wider)


def test_save_refuses_objects_json_cannot_hold(model, tmp_path):
    scores = make_scores(model)
    scores.meta["options"] = {"callback": object()}
    with pytest.raises(ScoresError, match="cannot be written as JSON"):
        scores.save(tmp_path / "scores.json")
    assert list(tmp_path.iterdir()) == []


def test_bias_compensation_is_recommended_for_centred_scores_with_mean_inputs(model):
    from bip_core.scores import is_centred, recommends_compensation

    assert recommends_compensation(make_scores(model, method="flap"))
    assert recommends_compensation(make_scores(model, options={"aggregation": "std"}))
    assert not recommends_compensation(make_scores(model, options={"aggregation": "rms"}))
    without_means = make_scores(model, method="flap")
    for layer in without_means.layers:
        del layer["o_input_mean"]
    assert is_centred("flap", {}) and not recommends_compensation(without_means)

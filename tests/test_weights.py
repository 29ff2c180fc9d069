"""bip_core.weights: safetensors written tensor by tensor read back by safetensors itself, and by FolderWeights."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bip_core.errors import ModelSpecError
from bip_core.weights import INDEX_FILE, SINGLE_FILE, ModuleWeights, TensorEntry, open_weights, read_header, \
    write_safetensors, write_sharded


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.f32": torch.randn(3, 5, generator=g),
            "b.bf16": torch.randn(7, 2, generator=g).to(torch.bfloat16),
            "c.f16": torch.randn(4, generator=g).to(torch.float16),
            "d.i64": torch.arange(6).reshape(2, 3),
            "e.bool": torch.tensor([True, False, True]),
            "f.empty": torch.zeros(0, 4),
            "g.transposed": torch.randn(3, 4, generator=g).t()}  # not contiguous


def entries_of(tensors):
    return [TensorEntry(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def assert_same(loaded: dict, tensors: dict):
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_write_safetensors_round_trips_through_safetensors(tmp_path):
    tensors = sample_tensors()
    size = write_safetensors(tmp_path / "x.safetensors", entries_of(tensors), tensors.__getitem__,
                             metadata={"format": "pt", "note": 1})
    assert size == (tmp_path / "x.safetensors").stat().st_size
    assert_same(load_file(tmp_path / "x.safetensors"), tensors)
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "1"}
    assert (8 + len(json.dumps(read_header(tmp_path / "x.safetensors")))) <= size


def test_write_sharded_with_index_and_folder_weights(tmp_path):
    tensors = sample_tensors()
    names = write_sharded(tmp_path, entries_of(tensors), tensors.__getitem__, max_shard_bytes=40)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert names[-1] == INDEX_FILE and set(index["weight_map"]) == set(tensors) and len(names) > 3
    assert index["metadata"]["total_size"] == sum(e.nbytes for e in entries_of(tensors))
    loaded = {}
    for shard in names[:-1]:
        loaded.update(load_file(tmp_path / shard))
    assert_same(loaded, tensors)
    weights = open_weights(tmp_path)
    assert sorted(weights.names()) == sorted(tensors) and "a.f32" in weights and "zzz" not in weights
    assert weights.shape("b.bf16") == (7, 2) and weights.dtype("b.bf16") == torch.bfloat16
    assert torch.equal(weights.get("b.bf16", dtype=torch.float32), tensors["b.bf16"].float())
    with pytest.raises(KeyError):
        weights.get("zzz")


def test_one_shard_is_model_safetensors_and_a_big_tensor_gets_its_own(tmp_path):
    tensors = sample_tensors()
    (tmp_path / "one").mkdir()
    assert write_sharded(tmp_path / "one", entries_of(tensors), tensors.__getitem__) == [SINGLE_FILE]
    assert_same(load_file(tmp_path / "one" / SINGLE_FILE), tensors)
    big = {"small": torch.zeros(2), "big": torch.zeros(100), "tail": torch.zeros(2)}
    (tmp_path / "big").mkdir()
    names = write_sharded(tmp_path / "big", entries_of(big), big.__getitem__, max_shard_bytes=64)
    assert [list(load_file(tmp_path / "big" / n)) for n in names[:-1]] == [["small"], ["big"], ["tail"]]


def test_a_tensor_of_another_dtype_or_shape_is_refused(tmp_path):
    entry = [TensorEntry("w", (2, 3), torch.float32)]
    with pytest.raises(ValueError, match="expected torch.float32"):
        write_safetensors(tmp_path / "x.safetensors", entry, lambda name: torch.zeros(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        write_safetensors(tmp_path / "y.safetensors", entry, lambda name: torch.zeros(3, 2))


def test_module_weights_and_an_empty_folder(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    weights = ModuleWeights(model)
    assert weights.names() == ["0.weight", "0.bias", "1.weight", "1.bias"] and weights.shape("0.weight") == (2, 3)
    copy = weights.get("0.weight", dtype=torch.float16)
    assert copy.dtype == torch.float16 and torch.equal(copy, model[0].weight.detach().half())
    fresh = weights.get("0.bias")
    fresh += 1  # a fresh tensor: the model is untouched
    assert not torch.equal(fresh, model[0].bias)
    with pytest.raises(ModelSpecError, match="no safetensors"):
        open_weights(tmp_path)

"""The model resolver: every spec kind, and the clear errors."""
import json

import pytest
import torch

from bip_core.architecture import family_of, layer_geometry, summary
from bip_core.errors import ModelSpecError, OfflineError, UnsupportedArchitectureError
from bip_core.loading import load_model
from bip_core.tiny_configs import FAMILIES, tiny_config


def test_default_model_geometry_and_greedy_answer(default_loaded):
    info = default_loaded.info()
    assert (info["layers"], info["heads"], info["kv_heads"], info["head_dim"]) == (30, 9, 3, 64)
    assert info["intermediate"] == 1536 and info["family"] == "llama"
    assert 134_000_000 < info["params"] < 135_000_000
    assert info["path"] and (default_loaded.path.endswith("smollm2-135m-instruct"))
    tok, model = default_loaded.tokenizer, default_loaded.model
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    assert tok.chat_template  # chat template survived the GGUF conversion


def test_local_folder_roundtrip(tmp_path, default_loaded):
    cfg = tiny_config("mistral", gqa=True)
    from bip_core.loading import random_model

    model = random_model(cfg)
    model.save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.family == "mistral" and loaded.path == str(tmp_path)
    ids = torch.randint(0, 1000, (1, 8))
    assert torch.allclose(model(ids).logits, loaded.model(ids).logits, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_only_folder_gives_seeded_random_model(tmp_path, family):
    tiny_config(family, gqa=True).save_pretrained(tmp_path)
    a, b = load_model(str(tmp_path)), load_model(str(tmp_path))
    assert a.path is None and a.family == family
    assert a.tokenizer is not None and len(a.tokenizer) >= 49152
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # seed 0 both times
    geom = layer_geometry(a.model, 0)
    assert (geom.num_attention_heads, geom.num_key_value_heads) == (4, 2)


def test_missing_folder_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="not found"):
        load_model("./no/such/folder")


def test_empty_spec_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="No model given"):
        load_model("  ")


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="Llama.*Mistral.*Qwen2.*Qwen3"):
        load_model(str(tmp_path))
    with pytest.raises(UnsupportedArchitectureError):
        family_of(GPT2Config())


def test_hub_id_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="Hub"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - t0 < 5


def test_hub_probe_does_not_hang_when_the_connection_stalls(monkeypatch):
    import threading
    import time

    from bip_core import network

    release = threading.Event()

    def stalled(*args, **kwargs):  # simulates a DNS lookup or connect that never answers
        release.wait(30)
        raise OSError("stalled")

    monkeypatch.setattr(network, "_reachable", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network.socket, "create_connection", stalled)
    t0 = time.perf_counter()
    try:
        assert network.hub_reachable(timeout=0.5) is False
        assert time.perf_counter() - t0 < 3
    finally:
        release.set()
        monkeypatch.setattr(network, "_reachable", None)


def test_corrupt_weights_fail_with_a_clear_error(tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelSpecError, match="Could not load"):
        load_model(str(tmp_path))


def test_unreadable_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{ broken")
    with pytest.raises(ModelSpecError, match="config.json"):
        load_model(str(tmp_path))


def test_summary_reads_geometry_from_modules(tiny_model):
    s = summary(tiny_model)
    assert s["layers"] == 3 and s["hidden"] == 64
    assert s["params_attention_mlp"] < s["params"]


def test_cli_info_json(capsys):
    from bip_core.cli import main

    assert main(["info", "--model", "default", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["heads"], info["kv_heads"]) == (30, 9, 3)
    assert info["path"].endswith("smollm2-135m-instruct")


def test_weights_without_tokenizer_is_a_clear_error(tmp_path):
    from bip_core.loading import random_model

    random_model(tiny_config("llama")).save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match="no tokenizer files"):
        load_model(str(tmp_path))


def test_hub_reachability_is_probed_again_after_its_expiry(monkeypatch):
    """A server that starts offline must see the Hub once it comes back (and not probe on every call)."""
    from bip_core import network

    answers, clock = [False, True], [1000.0]
    probes = []

    def probe(host, timeout):
        probes.append(host)
        return answers[len(probes) - 1]

    monkeypatch.setattr(network, "_reachable", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network, "_probe", probe)
    monkeypatch.setattr(network.time, "monotonic", lambda: clock[0])
    assert network.hub_reachable() is False
    clock[0] += network.REACHABLE_TTL_S - 1
    assert network.hub_reachable() is False and len(probes) == 1  # still the cached answer
    clock[0] += 1
    assert network.hub_reachable() is True and len(probes) == 2  # expired: probed again
    monkeypatch.setattr(network, "_reachable", None)

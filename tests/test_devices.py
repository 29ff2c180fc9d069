"""Device, dtype and memory: flag parsing, the memory guard, `info` without weights, the layer-wise
skeleton, config-only vocabularies, bfloat16 loading, and the app's serving settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bip_core import memory_guard
from bip_core.architecture import count_params
from bip_core.devices import parse_max_memory, parse_size, resolve_device, resolve_dtype
from bip_core.errors import DeviceError, ModelTooLargeError
from bip_core.loading import load_model, random_model
from bip_core.model_size import ModelSize, size_of_model, size_of_weights
from bip_core.tiny_configs import tiny_config
from bip_core.weights import open_weights

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
             "num_hidden_layers": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 10000.0}


def llama_params(c: dict, vocab: int) -> int:
    """Parameters of a Llama config by hand: embeddings + head, per layer q/k/v/o, gate/up/down, 2 norms."""
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return c["num_hidden_layers"] * layer + vocab * h * (1 if c["tie_word_embeddings"] else 2) + h


def config_folder(path: Path, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**LLAMA2_7B, **overrides}))
    return path


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bip_core", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def text_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n\n".join(["The river flows north past the old mill and the church. " * 12,
                                  "A small town with a market square and seven bridges. " * 12]))
    return f"file:{path}"


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    random_model(tiny_config("llama", gqa=True)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- devices.py ---------------------------------------------------------------------------------------

def test_devices_resolve_on_this_machine_and_refuse_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda:0")
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(DeviceError, match="auto, cpu, cuda"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="float32, bfloat16, float16"):
        resolve_dtype("int8")


def test_auto_picks_cuda_and_bfloat16_when_a_gpu_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("auto") == torch.device("cuda", 0) and resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(DeviceError, match="2 GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == torch.float32


def test_max_memory_strings_become_accelerates_dict():
    assert parse_max_memory("cpu=8GiB,cuda:0=20GiB") == {"cpu": 8 * 2**30, 0: 20 * 2**30}
    assert parse_max_memory("cuda=1.5GB, 1=500MiB ,disk=1TB") == {0: 1_500_000_000, 1: 500 * 2**20, "disk": 10**12}
    assert parse_max_memory(None) is None and parse_max_memory("") is None
    assert parse_max_memory({"cpu": "2GiB", 0: 1024}) == {"cpu": 2 * 2**30, 0: 1024}
    assert parse_size("1024") == 1024
    for bad, why in (("cpu", "DEVICE=SIZE"), ("cpu=lots", "memory size"), ("gpu=1GiB", "Unknown device"),
                     ("cpu=8XB", "memory size"), ("=1GiB", "DEVICE=SIZE")):
        with pytest.raises(DeviceError, match=why):
            parse_max_memory(bad)


# ---- sizes and the memory guard ------------------------------------------------------------------------

def test_sizes_from_skeleton_and_headers_match_the_real_parameter_count(saved_tiny):
    from bip_core.describe import describe
    from bip_core.skeleton import empty_model

    real = count_params(load_model(str(saved_tiny)).model)["total"]
    config = load_model(str(saved_tiny), pipeline="layerwise").model.config
    assert size_of_model(empty_model(config)).params == real
    assert size_of_weights(open_weights(saved_tiny)).params == real
    memory = describe(str(saved_tiny))["memory"]
    assert memory["weight_bytes"] == {"float32": 4 * real, "bfloat16": 2 * real, "float16": 2 * real}
    size = size_of_weights(open_weights(saved_tiny))
    assert memory["layerwise_bytes"]["float32"] == 4 * (max(size.layer_params) + size.other_params)


def test_guard_picks_whole_layerwise_or_refuses_with_the_ways_out(monkeypatch):
    size = ModelSize(layer_params=(10**9,) * 4, other_params=10**9)  # 5e9 params, 20 GB in float32
    monkeypatch.setattr(memory_guard, "available_ram", lambda: 64 * 2**30)
    assert memory_guard.choose_pipeline(size, torch.float32, torch.device("cpu")) == "whole"
    monkeypatch.setattr(memory_guard, "available_ram", lambda: 12 * 2**30)
    assert memory_guard.choose_pipeline(size, torch.float32, torch.device("cpu")) == "layerwise"
    with pytest.raises(ModelTooLargeError, match=r"(?s)bfloat16.*--pipeline layerwise.*--max-memory"):
        memory_guard.choose_pipeline(size, torch.float32, torch.device("cpu"), "whole")
    monkeypatch.setattr(memory_guard, "available_ram", lambda: 4 * 2**30)
    with pytest.raises(ModelTooLargeError, match="layer-wise pipeline holds"):
        memory_guard.choose_pipeline(size, torch.float32, torch.device("cpu"))
    budget = {"cpu": 2**30}
    with pytest.raises(ModelTooLargeError, match="--max-memory allows 1.0 GiB.*--offload-folder"):
        memory_guard.choose_pipeline(size, torch.float32, torch.device("cpu"), "whole", budget)


def test_auto_goes_layerwise_when_the_model_does_not_fit(monkeypatch, saved_tiny):
    size = size_of_weights(open_weights(saved_tiny))
    whole, layerwise = (memory_guard.required_bytes(n) for n in (size.bytes(torch.float32),
                                                                 size.layerwise_bytes(torch.float32)))
    monkeypatch.setattr(memory_guard, "available_ram", lambda: (whole + layerwise) // 2)  # only layer-wise fits
    loaded = load_model(str(saved_tiny))
    assert loaded.pipeline == "layerwise" and all(p.device.type == "meta" for p in loaded.model.parameters())
    with pytest.raises(ModelTooLargeError, match="Ways out"):
        load_model(str(saved_tiny), pipeline="whole")


def test_cli_refuses_in_one_line_in_process(saved_tiny, tmp_path, capsys):
    from bip_core.cli import main

    big = config_folder(tmp_path / "big", num_hidden_layers=32 * _times_ram(LLAMA2_7B))
    for argv in (["eval", "--model", str(saved_tiny), "--max-memory", "cpu=100KB", "--windows", "1"],
                 ["score", "--model", str(big), "--pipeline", "whole", "--out", str(tmp_path / "s.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: Not enough memory") and "\n" not in err and "Ways out" in err


def _times_ram(config: dict) -> int:
    """How many copies of a 7B model's layers make a float32 model larger than twice the free RAM."""
    need = 4 * llama_params(config, 49152)
    return max(1, -(-2 * memory_guard.available_ram() // need))


# ---- config-only folders, layer-wise skeletons, dtypes ----------------------------------------------------

def test_config_vocab_smaller_than_the_tokenizer_is_grown_and_scores(tmp_path, text_source):
    from bip_core.describe import describe
    from bip_core.scoring import score

    config = tiny_config("llama", gqa=True)
    config.vocab_size = 1000
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.model.config.vocab_size == len(loaded.tokenizer) > 1000
    assert "vocab_size raised from 1000" in loaded.note
    assert "vocab_size raised from 1000" in describe(str(tmp_path))["note"]
    scores = score(loaded.model, loaded.tokenizer, method="bip", source=text_source, samples=2, seq_len=16,
                   batch_size=2)
    assert len(scores.layers) == 3  # used to die with IndexError: index out of range in self
    text = Path(text_source.removeprefix("file:")).read_text()
    assert max(loaded.tokenizer(text).input_ids) >= 1000  # the text does use ids past the config's vocab


def test_layerwise_gives_a_meta_skeleton_with_every_weight(tmp_path, saved_tiny):
    from bip_core.random_weights import RandomWeights

    tiny_config("qwen3", gqa=True).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), pipeline="layerwise")
    model = loaded.model
    assert loaded.pipeline == "layerwise" and isinstance(loaded.weights, RandomWeights)
    assert all(p.device.type == "meta" for p in model.parameters())
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu" and torch.isfinite(inv_freq).all()  # real, not meta
    state = model.state_dict()
    assert set(state) <= set(loaded.weights.names())
    for name in state:
        assert loaded.weights.shape(name) == tuple(state[name].shape)
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(loaded.weights.get(name), loaded.weights.get(name))  # seeded per tensor name
    assert torch.equal(loaded.weights.get("lm_head.weight"), loaded.weights.get("model.embed_tokens.weight"))
    folder = load_model(str(saved_tiny), pipeline="layerwise")
    tied = {"lm_head.weight"} if folder.model.config.tie_word_embeddings else set()
    assert set(folder.model.state_dict()) - tied <= set(folder.weights.names())


def test_bfloat16_loading_and_float32_statistics(saved_tiny, text_source):
    from bip_core.cli import build_parser
    from bip_core.commands.common import load_kwargs
    from bip_core.scoring import score

    args = build_parser().parse_args(["score", "--model", str(saved_tiny), "--dtype", "bfloat16", "--out", "x"])
    loaded = load_model(args.model, **load_kwargs(args))
    assert loaded.dtype == torch.bfloat16 and loaded.info()["dtype"] == "bfloat16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    scores = score(loaded.model, loaded.tokenizer, method="bip", source=text_source, samples=2, seq_len=16,
                   batch_size=2)
    values = torch.tensor([v for layer in scores.layers for v in layer["mlp"]])
    assert torch.isfinite(values).all() and (values > 0).any()


def test_eval_and_sweep_never_go_layerwise():
    from bip_core.cli import build_parser
    from bip_core.commands.common import load_kwargs

    parser = build_parser()
    assert load_kwargs(parser.parse_args(["eval"]))["pipeline"] == "whole"
    assert load_kwargs(parser.parse_args(["score", "--out", "x"]))["pipeline"] == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--pipeline", "layerwise"])


# ---- the app's serving settings ------------------------------------------------------------------------

def test_serving_settings_device_and_dtype_reach_the_loader_and_the_card(monkeypatch):
    from components.model_card import card_html
    from components.settings import from_env

    monkeypatch.setenv("BIP_DEVICE", "cpu")
    monkeypatch.setenv("BIP_DTYPE", "bfloat16")
    settings = from_env()
    assert (settings.device, settings.dtype) == ("cpu", "bfloat16")
    monkeypatch.setenv("BIP_DTYPE", "int4")
    with pytest.raises(DeviceError, match="int4"):
        from_env()
    info = {"spec": "x", "family": "llama", "params": 10, "params_attention_mlp": 5, "device": "cpu",
            "dtype": "bfloat16"}
    assert "bfloat16" in card_html(info) and "BIP_DEVICE" in card_html(info)


# ---- end to end in a subprocess ------------------------------------------------------------------------

@pytest.mark.slow
def test_info_on_a_7b_config_reads_nothing_and_is_fast(tmp_path):
    folder = config_folder(tmp_path / "llama2-7b")
    # the peak is VmHWM reset at the start: ru_maxrss would carry pytest's own peak across vfork + exec
    code = ("import sys, time; open('/proc/self/clear_refs', 'w').write('5'); "
            "import transformers.models.llama.modeling_llama; "  # imports: ~5 s alone
            "from transformers import AutoTokenizer; t = time.perf_counter(); from bip_core.cli import main; "
            "sys.stdout = open(sys.argv[2], 'w'); rc = main(['info', '--model', sys.argv[1], '--json']); "
            "sys.stdout.close(); hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
            "sys.stderr.write(f'{time.perf_counter() - t} {int(hwm.split()[1]) * 1024}')")
    out = tmp_path / "info.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    wall = time.perf_counter() - start
    seconds, rss = (float(x) for x in done.stderr.split()[-2:])
    info = json.loads(out.read_text())
    params = llama_params(LLAMA2_7B, 49152)  # vocabulary grown to the default tokenizer's
    assert info["params"] == params and info["memory"]["weight_bytes"]["bfloat16"] == 2 * params
    assert info["memory"]["weight_bytes"]["float32"] == 4 * params
    assert "vocab_size raised from 32000" in info["note"]
    assert rss < 2**30 and rss < params * 2 / 10, f"{rss / 2**20:.0f} MiB resident"
    assert seconds < 10, f"info took {seconds:.1f} s after the imports ({wall:.1f} s wall in all)"


@pytest.mark.slow
def test_cli_memory_guard_refuses_with_exit_code_2(saved_tiny, tmp_path):
    done = run_cli("eval", "--model", str(saved_tiny), "--max-memory", "cpu=100KB", "--windows", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: Not enough memory") and "--offload-folder" in done.stderr
    big = config_folder(tmp_path / "big", num_hidden_layers=32 * _times_ram(LLAMA2_7B))
    done = run_cli("score", "--model", str(big), "--pipeline", "whole", "--out", str(tmp_path / "s.json"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--dtype bfloat16" in lines[0] and "--pipeline layerwise" in lines[0]


def test_gpu_branches_read_gpu_memory_and_place_on_the_gpu(monkeypatch):
    from bip_core.loading import LoadOptions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    assert memory_guard.free_bytes(torch.device("cuda", 0)) == 3 * 2**30
    size = ModelSize(layer_params=(10**8,) * 10, other_params=10**8)  # 1.1e9 params: 2.2 GB in bfloat16
    with pytest.raises(ModelTooLargeError, match="cuda:0 has 3.0 GiB free"):
        memory_guard.choose_pipeline(size, torch.bfloat16, torch.device("cuda", 0), "whole")
    assert memory_guard.choose_pipeline(size, torch.bfloat16, torch.device("cuda", 0)) == "layerwise"
    options = LoadOptions(torch.device("cuda", 1), torch.bfloat16)
    assert options.placement() == {"device_map": "cuda:1"}
    spread = LoadOptions(torch.device("cuda", 0), torch.bfloat16, {0: 2**30, "cpu": 2**32}, "/tmp/off")
    assert spread.placement() == {"device_map": "auto", "max_memory": {0: 2**30, "cpu": 2**32},
                                  "offload_folder": "/tmp/off"}


def test_an_export_evaluates_through_disk_offload_with_the_same_perplexity(saved_tiny, tmp_path, text_source):
    from bip_core.export import export_model
    from bip_core.perplexity import perplexity
    from bip_core.plan import make_plan
    from bip_core.scoring import score
    from bip_core.surgery import prune_model

    dense = load_model(str(saved_tiny))
    plan = make_plan(score(dense.model, dense.tokenizer, method="magnitude"), dense.model, ratio=0.3)
    export_model(prune_model(dense.model, plan), dense.tokenizer, plan, tmp_path / "export")
    whole = load_model(str(tmp_path / "export"))
    offloaded = load_model(str(tmp_path / "export"), max_memory="cpu=3MB", offload_folder=tmp_path / "off")
    assert "disk" in set(offloaded.model.hf_device_map.values()) and offloaded.pipeline == "whole"
    ppl = [perplexity(m.model, m.tokenizer, text_source, "test", seq_len=16, windows=2)["ppl"]
           for m in (whole, offloaded)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)
    from bip_core.describe import describe

    info = describe(str(tmp_path / "export"))  # a pruned skeleton: per-layer shapes from the export's config
    assert info["kind"] == "export" and info["params"] == count_params(whole.model)["total"]
    assert info["intermediate"] == whole.info()["intermediate"]


def test_an_allocator_out_of_memory_is_one_line_too(monkeypatch, capsys):
    from bip_core import cli
    from bip_core.commands import info

    def boom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(info, "run", boom)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "--pipeline layerwise" in err and "\n" not in err

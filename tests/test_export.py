"""Export: reload three ways with identical logits, atomic writes, corrupt folders fail clearly, `prune` CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bip_core.cli import main as cli_main
from bip_core.errors import ExportError
from bip_core.export import MANIFEST_FILE, MODELING_FILE, PLAN_FILE, export_model
from bip_core.loading import load_export, load_model, random_model
from bip_core.plan import make_plan
from bip_core.surgery import prune_model
from bip_core.tiny_configs import tiny_config
from fake_scores import fake_scores, tiny_folder_with_scores

IDS = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def pruned_tiny(family, uneven=True, compensate=True, gqa=True):
    """(pruned model, plan): uneven = different shapes per layer and one layer without attention."""
    model = random_model(tiny_config(family, gqa=gqa, layers=3), seed=0)
    scores = fake_scores(model, model_name=f"tiny-{family}")
    if uneven:
        plan = make_plan(scores, model, None, "manual", allow_empty_attention=True,
                         layer_ratios=[(0.5, 0.3), (1.0, 0.5), (0.0, 0.2)])
    else:
        plan = make_plan(scores, model, 0.3, "uniform")
    return prune_model(model, plan, bias_compensation=compensate, scores=scores), plan


# ---- three ways back ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ("llama", "qwen2", "qwen3"))
def test_reload_with_own_loader(tmp_path, tokenizer, family):
    pruned, plan = pruned_tiny(family)
    folder = export_model(pruned, tokenizer, plan, tmp_path / "export")
    loaded = load_model(str(folder))
    assert torch.equal(logits(loaded.model), logits(pruned))
    assert loaded.extra["plan"].layers == plan.layers
    info = loaded.info()
    assert info["heads"] == [s["num_heads"] for s in plan.pruned_shapes()] and info["params"] == sum(
        p.numel() for p in {id(p): p for p in pruned.parameters()}.values())


REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np, torch
    assert importlib.util.find_spec("bip_core") is None, "bip_core must not be importable here"
    sys.modules["bip_core"] = None  # and any attempt to import it fails
    from transformers import AutoModelForCausalLM
    folder, ids, out = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        np.save(out, model(input_ids=ids).logits.numpy())
        generated = model.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    print(type(model).__name__, generated.shape[1])
""")


@pytest.mark.slow
@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_reload_with_remote_code_on_a_machine_without_bip_studio(tmp_path, tokenizer, family):
    pruned, plan = pruned_tiny(family)
    folder = export_model(pruned, tokenizer, plan, tmp_path / "export")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    out = tmp_path / "logits.npy"
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), json.dumps(IDS.tolist()), str(out)],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [f"Bip{pruned.__class__.__name__}", str(IDS.shape[1] + 4)]
    torch.testing.assert_close(torch.from_numpy(np.load(out)), logits(pruned), rtol=0, atol=1e-6)


def test_uniform_export_loads_without_remote_code(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    for compensate in (False, True):  # Llama can switch the compensation biases on in its config
        pruned, plan = pruned_tiny("llama", uneven=False, compensate=compensate)
        folder = export_model(pruned, tokenizer, plan, tmp_path / f"export-{compensate}")
        config = json.loads((folder / "config.json").read_text())
        assert config["bip_studio"]["plain_loadable"] is True
        assert config["attention_bias"] is compensate and config["mlp_bias"] is compensate
        plain = AutoModelForCausalLM.from_pretrained(folder)
        assert type(plain) is LlamaForCausalLM
        assert plain.config.num_attention_heads == plan.pruned_shapes()[0]["num_heads"]
        assert torch.equal(logits(plain), logits(pruned))


def test_exports_that_plain_transformers_cannot_express_fail_loudly(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    cases = {"uneven": pruned_tiny("llama", uneven=True, compensate=False),
             "qwen2-bias": pruned_tiny("qwen2", uneven=False, compensate=True)}  # no config flag for o/down biases
    for name, (pruned, plan) in cases.items():
        folder = export_model(pruned, tokenizer, plan, tmp_path / name)
        meta = json.loads((folder / "config.json").read_text())["bip_studio"]
        assert meta["plain_loadable"] is False and "trust_remote_code=True" in meta["plain_load_note"]
        with pytest.raises(RuntimeError, match="mismatch|size"):  # never a silently wrong model
            AutoModelForCausalLM.from_pretrained(folder)
        assert torch.equal(logits(load_export(folder).model), logits(pruned))


@pytest.mark.slow
def test_default_model_export_round_trip(tmp_path, default_loaded):
    from transformers import AutoModelForCausalLM

    model, tok = default_loaded.model, default_loaded.tokenizer
    plan = make_plan(fake_scores(model), model, 0.25, "uniform", round_to=8)
    pruned = prune_model(model, plan)
    folder = export_model(pruned, tok, plan, tmp_path / "smol-pruned", provenance={"base_model": "default"})
    ids = tok("Pruning keeps the important parts", return_tensors="pt").input_ids
    reference = logits(pruned, ids)
    assert torch.equal(logits(load_model(str(folder)).model, ids), reference)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder), ids), reference)


# ---- contents -------------------------------------------------------------------------------------------

def test_export_folder_contents_and_provenance(tmp_path, tokenizer):
    pruned, plan = pruned_tiny("qwen3")
    folder = export_model(pruned, tokenizer, plan, tmp_path / "export", provenance={"note": "test"})
    names = sorted(p.name for p in folder.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", PLAN_FILE, MANIFEST_FILE, MODELING_FILE} <= set(names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not [n for n in os.listdir(tmp_path) if n != "export"]  # no temporary folder left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForCausalLM": "modeling_bip_pruned.BipQwen3ForCausalLM"}
    assert config["bip_layer_shapes"] == json.loads(json.dumps(pruned.config.bip_layer_shapes))
    meta = config["bip_studio"]
    prov = meta["provenance"]
    assert prov["base_model"] == "tiny-qwen3" and prov["method"] == "random" and prov["note"] == "test"
    assert prov["allocation"] == "manual" and prov["bias_compensation"] is True
    assert prov["layer_ratios"] == plan.meta["layer_ratios"] and prov["calibration"]["model"] == "tiny-qwen3"
    assert meta["plan_summary"]["params_after"] == plan.summary()["params_after"]
    source = (folder / MODELING_FILE).read_text()
    assert "bip_core" not in source.replace("never bip_core", "") and "from ." not in source


# ---- atomic writes and overwrites -----------------------------------------------------------------------

class FailingTokenizer:
    def save_pretrained(self, folder):
        raise OSError("disk full")


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    pruned, plan = pruned_tiny("llama")
    with pytest.raises(OSError, match="disk full"):
        export_model(pruned, FailingTokenizer(), plan, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_overwrites_only_an_older_export(tmp_path, tokenizer):
    pruned, plan = pruned_tiny("llama")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_model(pruned, tokenizer, plan, other)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1

    folder = export_model(pruned, tokenizer, plan, tmp_path / "export")
    second, second_plan = pruned_tiny("llama", uneven=False)
    export_model(second, tokenizer, second_plan, folder)
    assert torch.equal(logits(load_model(str(folder)).model), logits(second))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "notes"]


# ---- corrupt and truncated folders ----------------------------------------------------------------------

@pytest.fixture
def exported(tmp_path, tokenizer):
    pruned, plan = pruned_tiny("llama")
    return export_model(pruned, tokenizer, plan, tmp_path / "export")


def copy_of(folder, name):
    target = folder.parent / name
    shutil.copytree(folder, target)
    return target


def test_corrupt_and_truncated_exports_fail_with_export_error(exported):
    weights = "model.safetensors"
    flipped = copy_of(exported, "flipped")
    data = bytearray((flipped / weights).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    (flipped / weights).write_bytes(bytes(data))
    with pytest.raises(ExportError, match="corrupt"):
        load_model(str(flipped))

    truncated = copy_of(exported, "truncated")
    with open(truncated / weights, "r+b") as f:
        f.truncate(len(data) // 3)
    with pytest.raises(ExportError, match="truncated"):
        load_model(str(truncated))

    missing = copy_of(exported, "missing")
    (missing / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="tokenizer.json is missing"):
        load_model(str(missing))

    no_manifest = copy_of(exported, "no-manifest")
    (no_manifest / MANIFEST_FILE).unlink()
    with pytest.raises(ExportError, match="manifest"):
        load_export(no_manifest)

    header = copy_of(exported, "header")  # a broken safetensors header, with a matching manifest
    raw = bytearray((header / weights).read_bytes())
    raw[8:16] = b"\xff" * 8
    (header / weights).write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="Could not load the export"):
        load_export(header, verify=False)


# ---- CLI ------------------------------------------------------------------------------------------------

def test_prune_cli(tmp_path, capsys):
    model_folder, scores_file = tiny_folder_with_scores(tmp_path, "mistral")
    out = tmp_path / "pruned"
    code = cli_main(["prune", "--scores", str(scores_file), "--ratio", "0.3", "--allocation", "global",
                     "--bias-compensation", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params_after"] < printed["params_before"] and len(printed["layer_shapes"]) == 3
    assert abs(printed["removed_attention_mlp"] - 0.3) < 0.05 and printed["seconds"]["total"] > 0
    reloaded = load_model(str(out))
    assert sum(p.numel() for p in reloaded.model.parameters()) == printed["params_after"]

    plan_file = out / PLAN_FILE
    code = cli_main(["prune", "--model", str(model_folder), "--plan", str(plan_file), "--out", str(tmp_path / "again")])
    assert code == 0
    capsys.readouterr()
    code = cli_main(["prune", "--plan", str(plan_file), "--ratio", "0.2", "--out", str(tmp_path / "x")])
    assert code == 2 and "not both" in capsys.readouterr().err


@pytest.mark.parametrize("method, practice", [("flap", ("bias", False)), ("wanda-sp", ("none", True)),
                                              ("random", ("none", False))])
def test_prune_cli_defaults_to_the_methods_practice(tmp_path, capsys, method, practice):
    """Without --compensation / --sequential, prune runs the method's practice (bip_core.practice), as the
    app and sweep do."""
    _, scores_file = tiny_folder_with_scores(tmp_path, "llama")
    scores = json.loads(scores_file.read_text())
    scores["meta"].update(method=method, source="wiki-bb", samples=2, seq_len=16)  # the calibration a rescore uses
    scores_file.write_text(json.dumps(scores))
    code = cli_main(["prune", "--scores", str(scores_file), "--ratio", "0.3", "--allocation", "uniform",
                     "--out", str(tmp_path / "pruned")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["compensation"], printed["sequential"]) == practice

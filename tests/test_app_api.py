"""The launched app, driven with gradio_client: load -> score -> plan -> prune -> compare -> export on
the default model, plus bad input (unknown model, empty prompt, a ratio that empties a layer, a
second click while a job runs), per-session isolation and the cleanup of idle sessions."""
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

pytestmark = pytest.mark.slow

PUBLIC_ENDPOINTS = {"/load_model", "/calibration_text", "/score", "/make_plan", "/plan_file", "/prune", "/chat", "/perplexity",
                    "/zeroshot", "/speed", "/export", "/plan", "/select_scores"}
PLAN_DEFAULTS = dict(skip_first=0, skip_last=0, round_to="1", allow_empty=False, ratios_json="", order="sorted",
                     overlay=True)


@pytest.fixture(scope="module")
def served():
    from app_server import launch

    url, studio, demo = launch()
    yield url, studio
    demo.close()


def _client(url) -> Client:
    return Client(url, verbose=False, download_files=True)


def _plan(client, ratio=0.2, allocation="uniform", **kw):
    args = {**PLAN_DEFAULTS, **kw}
    return client.predict(ratio, allocation, args["skip_first"], args["skip_last"], args["round_to"],
                          args["allow_empty"], args["ratios_json"], args["order"], args["overlay"],
                          api_name="/make_plan")


def _load_and_score(client, samples=8, seq_len="64"):
    client.predict("default", api_name="/load_model")
    return client.predict("bip", "wiki-bb", samples, seq_len, "auto", 0, api_name="/score")


def test_full_flow(served, tmp_path):
    from bip_core.loading import load_model
    from bip_core.scores import Scores

    url, _ = served
    client = _client(url)
    card, strip, msg = client.predict("default", api_name="/load_model")
    assert "GQA" in card and "134.5M" in strip and "Loaded" in msg

    status, strip, info, scores_file = client.predict("bip", "wiki-bb", 8, "64", "auto", 0, api_name="/score")
    assert "LLM-BIP" in status and "scored" in status
    assert info["layers"] == 30
    assert info["attention_units_per_layer"] == [3] * 30 and info["mlp_channels_per_layer"] == [1536] * 30
    scores = Scores.load(scores_file)
    assert len(scores.layers) == 30
    assert all(len(layer["attention"]) == 3 and len(layer["mlp"]) == 1536 for layer in scores.layers)
    assert scores.meta["samples"] == 8 and scores.meta["seq_len"] == 64

    readout, figure, summary, ratios, strip, allocation = _plan(client, 0.2)
    assert allocation == "uniform" and "20.0%" in readout and summary["removed_attention_mlp"] == pytest.approx(0.2, abs=0.005)
    assert summary["params_after"] < summary["params_before"]
    assert len(json.loads(ratios)) == 30
    from bip_core.plan import Plan
    plan = Plan.load(client.predict(api_name="/plan_file"))
    assert plan.summary()["params_after"] == summary["params_after"]

    msg, table, details, plan_info, strip = client.predict(False, api_name="/prune")
    assert details["params_after"] == summary["params_after"] < summary["params_before"]
    assert "pruned #1" in msg

    status, table, *_ = client.predict("wiki-bb", 4, api_name="/perplexity")
    rows = table["data"]
    assert [r[0] for r in rows][:1] == ["original"] and rows[1][0].startswith("pruned #1")
    for row in rows:
        assert "perplexity wiki-bb test (4 x 128)" == row[1] and math.isfinite(float(row[2]))

    original, pruned, prompt, info = client.predict("What is the capital of France?", 12, 0.0, 0, [], [],
                                                    api_name="/chat")
    assert info.startswith("Done") and "pruned:" in info
    new_tokens = [int(n) for n in re.findall(r"(\d+) new tokens", info)]
    assert len(new_tokens) == 2 and all(0 < n <= 12 for n in new_tokens)  # generated tokens, not re-tokenized text
    assert original[-1]["role"] == "assistant" and "Paris" in str(original[-1]["content"])
    assert pruned[-1]["role"] == "assistant" and prompt == ""

    info_md, archive, listing = client.predict(api_name="/export")
    names = [r[0] for r in listing["data"]]
    assert "model.safetensors" in names and "bip_plan.json" in names
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)
    folder = next(p for p in Path(tmp_path).iterdir() if p.is_dir())
    reloaded = load_model(str(folder))
    from bip_core.architecture import count_params
    assert count_params(reloaded.model)["total"] == summary["params_after"]


def test_prune_compensation_and_sequential(served):
    """/prune takes compensation none / bias / refit and sequential; the former bias bool still works; the
    export records the choice."""
    url, _ = served
    client = _client(url)
    client.predict("default", api_name="/load_model")
    client.predict("wanda-sp", "wiki-bb", 8, "64", "auto", 0, api_name="/score")
    _plan(client, 0.2)
    msg, table, details, *_ = client.predict("refit", True, api_name="/prune")
    assert (details["compensation"], details["sequential"]) == ("refit", True)
    assert "Compensation: **refit**; sequential: **on**" in msg and "refit, sequential" in details["label"]
    assert any(row[0].startswith("calibration pass") for row in table["data"])
    _, archive, _ = client.predict(api_name="/export")
    with zipfile.ZipFile(archive) as zf:
        config = json.loads(next(zf.read(n) for n in zf.namelist() if n.endswith("/config.json")))
    assert config["bip_studio"]["provenance"]["compensation"] == "refit"
    assert config["bip_studio"]["provenance"]["sequential"] is True
    msg, _, details, *_ = client.predict(True, api_name="/prune")  # the former checkbox: bias, not sequential
    assert (details["compensation"], details["sequential"], details["bias_compensation"]) == ("bias", False, True)
    with pytest.raises(Exception, match="Unknown compensation|not in the list of choices"):
        client.predict("mean", api_name="/prune")


def test_bad_input_gives_messages_and_app_keeps_working(served):
    url, _ = served
    client = _client(url)
    readout, *_ = _plan(client, 0.2)
    assert "Load a model" in readout  # a plan before anything: a hint, not an error
    with pytest.raises(Exception, match="Load a model first"):
        client.predict("bip", "wiki-bb", 8, "64", "auto", 0, api_name="/score")
    with pytest.raises(Exception, match="not found"):
        client.predict("no/such/model/anywhere", api_name="/load_model")
    _load_and_score(client)
    _, _, before, *_ = _plan(client, 0.2)
    # Plans the settings cannot give: the readout says why, and the previous plan stays.
    readout, _, summary, *_ = _plan(client, 0.9, "uniform", skip_first=8, skip_last=8)
    assert "Not applied" in readout and "impossible" in readout and summary == before
    empties_layer_0 = json.dumps([[1.0, 0.2]] + [[0.0, 0.2]] * 29)
    readout, _, summary, *_ = _plan(client, 0.2, "manual", ratios_json=empties_layer_0)
    assert "removes all 3 attention units" in readout and summary == before
    readout, *_ = _plan(client, 0.2, "manual", ratios_json="[1, 2")
    assert "JSON list of 30" in readout
    with pytest.raises(Exception, match="Type a prompt"):
        client.predict("   ", 8, 0.0, 0, [], [], api_name="/chat")
    with pytest.raises(Exception, match="Prune the model first"):
        client.predict(api_name="/export")
    # Still working after all that:
    readout, _, summary, *_ = _plan(client, 0.3, "global")
    assert summary["removed_attention_mlp"] == pytest.approx(0.3, abs=0.01)


def test_second_click_while_a_job_runs(served):
    url, _ = served
    client = _client(url)
    client.predict("default", api_name="/load_model")
    job = client.submit("bip", "wiki-bb", 24, "128", "auto", 0, api_name="/score")
    deadline = time.time() + 60
    while job.status().code not in (Status.PROCESSING, Status.PROGRESS) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    with pytest.raises(Exception, match="still running"):
        client.predict("bip", "wiki-bb", 8, "64", "auto", 0, api_name="/score")
    status, *_ = job.result(timeout=120)
    assert "scored" in status
    status, *_ = client.predict("magnitude", "wiki-bb", 8, "64", "auto", 0, api_name="/score")
    assert "Magnitude" in status


def test_sessions_are_isolated_and_idle_ones_are_freed(served):
    url, studio = served
    a, b = _client(url), _client(url)
    _load_and_score(a)
    _plan(a, 0.2)
    a.predict(False, api_name="/prune")
    with pytest.raises(Exception, match="Load a model first"):
        b.predict(False, api_name="/prune")  # b never sees a's pruned model
    b.predict("default", api_name="/load_model")
    with pytest.raises(Exception, match="Score the model first"):
        b.predict(False, api_name="/prune")
    registry = studio.registry
    assert len(registry) >= 2
    freed = registry.sweep(now=time.time() + registry.ttl + 1)
    assert freed >= 2
    with pytest.raises(Exception, match="idle and its models were freed"):
        a.predict(False, api_name="/prune")
    assert studio.store.loaded_specs() == ["default"]  # the shared original stays loaded


def _api(client) -> dict:
    return client.view_api(return_format="dict", print_info=False)


def test_no_public_endpoint_resets_the_session(served):
    """A gr.State default must not add a public load endpoint (it used to be /StudioSession, which wiped the
    caller's session)."""
    url, _ = served
    client = _client(url)
    api = _api(client)
    assert not api["unnamed_endpoints"]
    assert set(api["named_endpoints"]) == PUBLIC_ENDPOINTS
    _load_and_score(client)
    _plan(client, 0.2)
    with pytest.raises(Exception):
        client.predict(api_name="/StudioSession")
    msg, *_ = client.predict(False, api_name="/prune")
    assert "pruned #1" in msg


def test_api_names_types_and_descriptions(served):
    """Every public endpoint has named parameters and outputs, a description, and choices of the type the
    server accepts (the client shows every choice as a string, so choices are strings)."""
    url, _ = served
    client = _client(url)
    for name, endpoint in _api(client)["named_endpoints"].items():
        assert len(endpoint["description"]) > 30, name
        for param in endpoint["parameters"]:
            assert not param["parameter_name"].startswith("param_"), (name, param)
            choices = (param["type"] or {}).get("enum") or ((param["type"] or {}).get("items") or {}).get("enum")
            assert all(isinstance(c, str) for c in choices or []), (name, param["parameter_name"], choices)
        for output in endpoint["returns"]:
            assert not output["label"].startswith("value_"), (name, output)
    score = _api(client)["named_endpoints"]["/score"]["parameters"]
    seq_len = next(p for p in score if p["parameter_name"] == "seq_len")
    assert seq_len["python_type"]["type"] == "Literal['32', '64', '128', '256', '512']"
    client.predict("default", api_name="/load_model")
    status, *_ = client.predict(method="magnitude", samples=8, seq_len="128", norm="l1", api_name="/score")
    assert "Magnitude" in status and "norm=l1" in status
    _, _, summary, *_ = _plan(client, 0.2, round_to="64")
    assert all(layer["mlp_kept"] % 64 == 0 for layer in summary["layers"])


def test_own_calibration_text(served, tmp_path):
    """Upload or paste a text, score with source 'custom'; bad text gets a message that says what to do."""
    from gradio_client import handle_file

    url, _ = served
    client = _client(url)
    with pytest.raises(Exception, match="No calibration text of yours yet"):
        client.predict("default", api_name="/load_model")
        client.predict(method="bip", source="custom", samples=8, seq_len="64", api_name="/score")
    text = "\n\n".join(f"Note {i}: pruning removes whole heads and channels from a model." for i in range(300))
    message, source = client.predict(None, text, api_name="/calibration_text")
    assert "your text" in message and source == "custom"
    status, _, info, _ = client.predict(method="bip", source="custom", samples=8, seq_len="64", api_name="/score")
    assert "your text 8x64" in status and info["source"].startswith("file:")
    latin1 = tmp_path / "notes.txt"
    latin1.write_bytes("Caf\xe9 notes, not UTF-8.".encode("latin-1"))
    with pytest.raises(Exception, match="not UTF-8"):
        client.predict(handle_file(str(latin1)), "", api_name="/calibration_text")
    big = tmp_path / "big.txt"
    big.write_text("word " * 500_000)
    with pytest.raises(Exception, match="larger than the limit"):
        client.predict(handle_file(str(big)), "", api_name="/calibration_text")


def test_lean_plan_and_switching_scores_runs(served):
    """Scripts get a plan without the ~170 KB heatmap, and can switch the active scores run."""
    url, _ = served
    client = _client(url)
    with pytest.raises(Exception, match="load_model"):
        _client(url).predict(0.2, api_name="/plan")
    _load_and_score(client)
    client.predict(method="magnitude", samples=8, seq_len="64", api_name="/score")
    result = client.predict(ratio=0.3, allocation="global", api_name="/plan")
    assert result["applied"] and result["summary"]["removed_attention_mlp"] == pytest.approx(0.3, abs=0.01)
    assert len(json.dumps(result)) < 20_000 and len(result["layer_ratios"]) == 30
    assert result["summary"]["scores_label"].startswith("Magnitude")
    runs = client.predict(api_name="/select_scores")
    assert runs["active"].startswith("Magnitude") and len(runs["runs"]) == 2
    bip = next(r for r in runs["runs"] if r.startswith("LLM-BIP"))
    assert client.predict(bip, api_name="/select_scores")["scores"]["method"] == "bip"
    result = client.predict(ratio=0.3, allocation="global", api_name="/plan")
    assert result["summary"]["scores_label"] == bip
    refused = client.predict(ratio=0.9, allocation="uniform", skip_first=8, skip_last=8, api_name="/plan")
    assert not refused["applied"] and "impossible" in refused["message"]
    assert refused["summary"] == result["summary"] and refused["allocation"] == "global"
    with pytest.raises(Exception, match="No scores run 'nope'"):
        client.predict("nope", api_name="/select_scores")

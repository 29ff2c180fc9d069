"""Step 3's choices without a server, on a small random model scored for real: compensation none / bias /
refit and sequential, their defaults per scores method, what the pruned model and its export record, and
the refusal for scores without a forward pass."""
import json
import zipfile

import gradio as gr
import pytest
import torch

from bip_core.architecture import block_parts
from bip_core.loading import LoadedModel, random_model
from bip_core.scoring import score
from bip_core.tiny_configs import tiny_config
from components import compensation, context, export_panel, plan_events, prune_panel
from components.session import StudioSession
from components.settings import Settings

CALIBRATION = dict(source="wiki-bb", samples=8, seq_len=32, seed=0, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def studio():
    return context.init(Settings(allowed_models=None, max_params=None, concurrency=1, session_ttl=60, max_samples=256,
                                 max_windows=512, host="127.0.0.1", port=7860))


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return LoadedModel(random_model(tiny_config("llama", layers=3), seed=0), tokenizer, "tiny", None, "llama")


@pytest.fixture(scope="module")
def scored(tiny):
    """Scores of the tiny model per method (real calibration passes, cached for the module)."""
    return {m: score(tiny.model, tiny.tokenizer, m, **CALIBRATION) for m in ("bip", "wanda-sp", "magnitude")}


def planned(tiny, scores, ratio=0.3) -> StudioSession:
    session = StudioSession()
    session.reset_model(tiny)
    session.add_scores(scores.meta["method"], scores)
    assert plan_events.plan_only(session, ratio, "uniform")["applied"]
    return session


def prune(session, comp, sequential=False):
    return prune_panel.run_prune(session, comp, sequential, request=None, progress=lambda *a, **k: None)


def _weights(model, name):
    return [getattr(block_parts(model, i), name).weight for i in range(3)]


def test_defaults_follow_the_scores(scored):
    """Each method's practice (bip_core.practice): refit and sequential for LLM-BIP's centred scores, sequential
    without compensation for Wanda-sp, nothing to choose for scores without a forward pass."""
    def defaults(method):
        session = StudioSession()
        session.add_scores(method, scored[method])
        return compensation.defaults(session)

    comp, seq = defaults("bip")
    assert (comp["value"], seq["value"], comp["interactive"], seq["interactive"]) == ("refit", True, True, True)
    assert "LLM-BIP's default" in comp["info"]
    comp, seq = defaults("wanda-sp")
    assert (comp["value"], seq["value"]) == ("none", True)
    comp, seq = defaults("magnitude")
    assert (comp["value"], seq["value"], comp["interactive"], seq["interactive"]) == ("none", False, False, False)
    assert "no forward pass" in comp["info"]


def test_refit_prunes_otherwise_than_bias_and_says_so(tiny, scored, tmp_path):
    session = planned(tiny, scored["bip"])
    msg, *_ = prune(session, "bias")
    assert "bias comp." in msg and "Compensation: **bias**" in msg
    biased = [w.detach().clone() for w in _weights(session.pruned, "down_proj")]
    msg, rows, summary, info, _ = prune(session, "refit")
    assert "refit" in session.pruned_label and "Compensation: **refit**; sequential: **off**" in msg
    assert summary["compensation"] == "refit" and summary["sequential"] is False and summary["refit_alpha"]
    assert any(r[0].startswith("calibration pass") for r in rows) and "already pruned" in info
    refit = _weights(session.pruned, "down_proj")
    assert all(a.shape == b.shape for a, b in zip(biased, refit))  # the same plan: same kept channels
    assert not any(torch.allclose(a, b) for a, b in zip(biased, refit))
    assert session.pruned_plan.meta["compensation"] == "refit"

    _, archive, _ = export_panel.run_export(session, request=None, progress=lambda *a, **k: None)
    with zipfile.ZipFile(archive) as zf:
        config = json.loads(next(zf.read(n) for n in zf.namelist() if n.endswith("/config.json")))
    provenance = config["bip_studio"]["provenance"]
    assert (provenance["compensation"], provenance["sequential"], provenance["bias_compensation"]) == \
        ("refit", False, False)


def test_sequential_chooses_units_on_the_pruned_outputs(tiny, scored):
    session = planned(tiny, scored["wanda-sp"])
    msg, rows, summary, info, _ = prune(session, "none", True)
    assert summary["sequential"] is True and "sequential: **on**" in msg and "sequential" in session.pruned_label
    assert session.pruned_plan.meta["sequential"] is True and session.pruned_plan is not session.plan
    counts = [[len(layer[part]) for layer in plan.layers for part in ("attention", "mlp")]
              for plan in (session.pruned_plan, session.plan)]
    assert counts[0] == counts[1]  # the plan's counts, maybe other units
    assert session.pruned_plan.layers[0] == session.plan.layers[0]  # nothing upstream of layer 0 was pruned
    assert session.pruned_plan.layers[1:] != session.plan.layers[1:]
    assert "already pruned" in info  # made from the session's plan, though its units differ


def test_scores_without_a_forward_pass_refuse_refit_and_sequential(tiny, scored):
    session = planned(tiny, scored["magnitude"])
    for comp, seq in (("refit", False), ("none", True), ("bias", False)):
        with pytest.raises(gr.Error, match="Score with LLM-BIP, FLAP or Wanda-sp"):
            prune(session, comp, seq)
        assert session.pruned is None and "LLM-BIP, FLAP or Wanda-sp" in session.last_error
    msg, *_ = prune(session, "none", False)
    assert "Compensation: **none**" in msg and session.pruned is not None


def test_the_former_bias_checkbox_still_works_over_the_api():
    radio, _ = compensation.build()
    assert radio.preprocess(True) == "bias" and radio.preprocess(False) == "none"
    assert radio.preprocess("refit") == "refit"
    with pytest.raises(gr.Error):
        radio.preprocess("mean")

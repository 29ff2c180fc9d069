"""The plan handlers of step 2 on a small random model with made-up scores (no server): the per-layer
sliders change only the layer moved, a bad manual plan leaves no mixed state, and the Ratio slider
scales a manual plan."""
import json

import pytest

from bip_core.loading import LoadedModel, random_model
from bip_core.tiny_configs import tiny_config
from components import context, plan_events
from components.session import StudioSession
from components.settings import Settings
from fake_scores import fake_scores

VIEW = dict(order="sorted", overlay=True)


@pytest.fixture(scope="module", autouse=True)
def studio():
    return context.init(Settings(allowed_models=None, max_params=None, concurrency=1, session_ttl=60, max_samples=256,
                                 max_windows=512, host="127.0.0.1", port=7860))


@pytest.fixture(scope="module")
def tiny():
    """Four layers with 1536 MLP channels, like the default model's, so removed shares are not whole
    percentages."""
    model = random_model(tiny_config("llama", layers=4, intermediate=1536), seed=0)
    return model, fake_scores(model, seed=1)


def planned(tiny, ratio=0.3, allocation="global") -> StudioSession:
    model, scores = tiny
    session = StudioSession()
    session.reset_model(LoadedModel(model, None, "tiny", None, "llama"))
    session.scores["fake"], session.active = scores, "fake"
    plan_with(session, ratio, allocation)
    return session


def plan_with(session, ratio, allocation, ratios_json="", fn=plan_events.replan, **kw):
    args = {**dict(skip_first=0, skip_last=0, round_to="1", allow_empty=False), **kw}
    return dict(zip(plan_events.PLAN_VIEWS, fn(session, ratio, allocation, args["skip_first"], args["skip_last"],
                                               args["round_to"], args["allow_empty"], ratios_json, **VIEW,
                                               request=None)))


def kept(session):
    return [(layer["attention_kept"], layer["mlp_kept"]) for layer in session.plan_summary["layers"]]


def slider_values(spec):
    return [v for a, m in zip(spec["att"], spec["mlp"]) for v in (a, m)]


def test_moving_one_slider_changes_only_that_layer(tiny):
    session = planned(tiny)
    before = kept(session)
    assert any(m % 1 for m in session.editor_spec["mlp"])  # shares that are not whole percentages
    values = slider_values(session.editor_spec)
    values[2 * 1 + 1] = 40.0  # layer 1: 40% of MLP channels removed
    views = dict(zip(plan_events.PLAN_VIEWS, plan_events.edit_layers(session, "1", False, "sorted", True, *values)))
    after = kept(session)
    assert views["allocation"] == "manual" and session.plan.meta["allocation"] == "manual"
    assert after[1] == (before[1][0], 1536 - round(0.4 * 1536))
    assert [a for i, a in enumerate(after) if i != 1] == [b for i, b in enumerate(before) if i != 1]
    # The next move starts from the sliders as they are now: layer 1 stays, layer 3 changes.
    values[2 * 3] = 0.0
    plan_events.edit_layers(session, "1", False, "sorted", True, *values)
    assert kept(session)[1] == after[1] and kept(session)[3][0] == session.editor_spec["units"][3]
    assert kept(session)[:3] == after[:3]


def test_a_slider_position_the_plan_cannot_take_snaps_back(tiny):
    session = planned(tiny)
    before = kept(session)
    units = session.editor_spec["units"][0]
    values = slider_values(session.editor_spec)
    values[0] = float(units)  # all attention units of layer 0
    views = dict(zip(plan_events.PLAN_VIEWS, plan_events.edit_layers(session, "1", False, "sorted", True, *values)))
    assert "Not applied" in views["readout"] and f"removes all {units} attention units" in views["readout"]
    assert kept(session) == before and views["allocation"] == "global"
    assert views["editor"]["att"][0] == units - before[0][0]  # the slider goes back to the plan's value


def test_bad_json_for_a_manual_plan_leaves_the_allocation_as_it_was(tiny):
    session = planned(tiny, allocation="uniform", ratio=0.2)
    views = plan_with(session, 0.2, "uniform", "[1, 2", fn=plan_events.apply_manual)
    assert "Not applied" in views["readout"] and "JSON list of 4" in views["readout"]
    assert views["allocation"] == "uniform" and "plan: uniform" in views["readout"]
    assert session.plan.meta["allocation"] == "uniform"
    good = json.dumps([[0.5, 0.1]] * 4)
    views = plan_with(session, 0.2, "uniform", good, fn=plan_events.apply_manual)
    units = session.editor_spec["units"][0]
    assert views["allocation"] == "manual" and kept(session) == [(units - units // 2, 1536 - 154)] * 4


def test_the_ratio_slider_scales_a_manual_plan(tiny):
    session = planned(tiny, ratio=0.2, allocation="global")
    proportions = [m for _, m in session.plan.meta["layer_ratios"]]
    plan_with(session, 0.2, "manual")  # the global plan, now manual
    views = plan_with(session, 0.5, "manual", fn=plan_events.ratio_moved)
    assert session.plan_summary["removed_attention_mlp"] == pytest.approx(0.5, abs=0.02)
    assert "scaled" in views["readout"] and views["allocation"] == "manual"
    scaled = [m for _, m in session.plan.meta["layer_ratios"]]
    order = sorted(range(4), key=lambda i: proportions[i])
    assert sorted(range(4), key=lambda i: scaled[i]) == order  # the layers keep their order
    # Other controls do not rescale it, and a ratio the layers cannot reach says so.
    plan_with(session, 0.5, "manual", round_to="8")
    assert session.plan_summary["removed_attention_mlp"] == pytest.approx(0.5, abs=0.03)
    views = plan_with(session, 0.99, "manual", fn=plan_events.ratio_moved, allow_empty=False)
    assert "as far as the layers allow" in views["readout"]

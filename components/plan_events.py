"""Step 2b handlers: from the plan controls to a plan, instantly (no re-scoring).

Every handler returns the same views, in `PLAN_VIEWS` order: readout, heatmap, plan summary,
per-layer ratios (JSON), pipeline strip, editor spec (re-renders the per-layer sliders) and the
allocation in effect. A setting the plan cannot take keeps the previous plan, says why in the
readout, and puts the allocation radio back to the plan's own, so the controls never claim a plan
that is not there.
"""
import html

import gradio as gr

from bip_core.errors import BipError
from bip_core.plan import make_plan

from . import manual_scaling, status_bar
from .context import attach
from .jobs import friendly, ui_errors
from .tune_panel import PRESETS, editor_spec, figure_for, parse_ratios, ratios_text, readout_html

PLAN_VIEWS = ("readout", "heatmap", "plan summary", "per-layer ratios", "pipeline", "editor", "allocation")
RESCALE_TOLERANCE = 0.005  # half a step of the Ratio slider


def _make(session, ratio, allocation, skip_first, skip_last, round_to, allow_empty, layer_ratios=None):
    plan = make_plan(session.active_scores, session.loaded.model, None if allocation == "manual" else float(ratio),
                     allocation=allocation, skip_first=int(skip_first or 0), skip_last=int(skip_last or 0),
                     layer_ratios=layer_ratios, allow_empty_attention=bool(allow_empty), round_to=int(round_to or 1))
    summary = plan.summary()
    summary["scores_label"] = session.active
    session.plan, session.plan_summary = plan, summary
    session.plan_settings = dict(ratio=ratio, allocation=allocation, skip_first=skip_first, skip_last=skip_last,
                                 round_to=round_to, allow_empty=allow_empty)
    return plan


def _allocation(session, fallback):
    return session.plan.meta["allocation"] if session.plan is not None else fallback


def views(session, order, overlay, message="", editor=True, allocation=None) -> tuple:
    """The plan views (PLAN_VIEWS); `editor=False` leaves the sliders as they are."""
    return (readout_html(session.plan_summary, message), figure_for(session, order, overlay), session.plan_summary,
            ratios_text(session.plan), status_bar.render(session), editor_spec(session) if editor else gr.skip(),
            _allocation(session, allocation))


def not_applied(session, err, order, overlay, allocation) -> tuple:
    """A plan the settings cannot give: say why; the previous plan (and its allocation) stays."""
    message = friendly(err).message
    gr.Warning(message)
    kept = "The previous plan is kept." if session.plan is not None else ""
    return views(session, order, overlay, f"Not applied: {html.escape(message)} {kept}", allocation=allocation)


def _no_plan_yet(session, order, overlay, allocation) -> tuple:
    msg = "Load a model (step 1) and score it to see a plan." if session.loaded is None else \
        "Score the model (left) to see a plan."
    return (readout_html(None, msg), figure_for(session, order, overlay), None, "", status_bar.render(session), None,
            allocation)


def _manual_ratios(session, ratios_json):
    n = len(session.active_scores.layers)
    if ratios_json and ratios_json.strip():
        return parse_ratios(ratios_json, n)
    return session.plan.meta["layer_ratios"] if session.plan is not None else [(0.0, 0.0)] * n


def _plan(session, settings: tuple, layer_ratios, order, overlay, note="") -> tuple:
    ratio, allocation, *_ = settings
    try:
        _make(session, *settings, layer_ratios)
    except (BipError, gr.Error) as err:
        return not_applied(session, err, order, overlay, allocation)
    return views(session, order, overlay, note, allocation=allocation)


@ui_errors
def replan(session, ratio, allocation, skip_first, skip_last, round_to, allow_empty, ratios_json, order, overlay,
           request: gr.Request):
    """Make the plan from the active scores (no scoring): `ratio` of attention+MLP parameters removed, spread
    across layers by `allocation` (manual: `ratios_json`, one [attention, mlp] removed pair per layer; `ratio` is
    not used). Returns: readout, heatmap (plotly, ~170 KB: scripts want /plan), plan summary, per-layer ratios
    (JSON), pipeline, the allocation in effect."""
    attach(session, request)
    if session.loaded is None or session.active_scores is None:
        return _no_plan_yet(session, order, overlay, allocation)
    settings = (ratio, allocation, skip_first, skip_last, round_to, allow_empty)
    try:
        layer_ratios = _manual_ratios(session, ratios_json) if allocation == "manual" else None
    except gr.Error as err:
        return not_applied(session, err, order, overlay, _allocation(session, allocation))
    return _plan(session, settings, layer_ratios, order, overlay)


def plan_only(session, ratio, allocation, skip_first=0, skip_last=0, round_to=1, allow_empty=False,
              ratios_json="") -> dict:
    """The plan without any view (for the lean API): applied or why not, the summary, per-layer ratios."""
    settings = (ratio, allocation, skip_first, skip_last, round_to, allow_empty)
    try:
        layer_ratios = _manual_ratios(session, ratios_json) if allocation == "manual" else None
        _make(session, *settings, layer_ratios)
        applied, message = True, ""
    except (BipError, gr.Error) as err:
        applied, message = False, friendly(err).message
    plan = session.plan
    return {"applied": applied, "message": message, "allocation": _allocation(session, allocation),
            "summary": session.plan_summary, "layer_ratios": plan.meta["layer_ratios"] if plan is not None else None}


@ui_errors
def apply_manual(session, ratio, allocation, skip_first, skip_last, round_to, allow_empty, ratios_json, order,
                 overlay, request: gr.Request):
    """'Apply as manual plan': the JSON ratios become a manual plan. The allocation switches to manual only
    when they apply; otherwise the readout says why and the previous plan and allocation stay."""
    return replan(session, ratio, "manual", skip_first, skip_last, round_to, allow_empty, ratios_json, order,
                  overlay, request)


@ui_errors
def ratio_moved(session, ratio, allocation, skip_first, skip_last, round_to, allow_empty, ratios_json, order,
                overlay, request: gr.Request):
    """The Ratio slider moved. Uniform and global plans follow it; a manual plan is scaled to it (every layer's
    ratios by one factor, so they keep their proportions), and the readout says so."""
    attach(session, request)
    plan = session.plan
    if allocation != "manual" or plan is None or session.active_scores is None or \
            abs(float(ratio) - session.plan_summary["removed_attention_mlp"]) < RESCALE_TOLERANCE:
        return replan(session, ratio, allocation, skip_first, skip_last, round_to, allow_empty, ratios_json, order,
                      overlay, request)
    before = session.plan_summary["removed_attention_mlp"]
    pairs, reached = manual_scaling.scale_to(plan, session.plan_summary, float(ratio), bool(allow_empty))
    note = (f"Manual allocation: every layer's ratios were scaled by one factor, from {before:.1%} to the Ratio "
            f"{float(ratio):.0%} (as closely as whole units and channels allow).")
    if not reached:
        note = (f"Manual allocation: scaled as far as the layers allow ({float(ratio):.0%} would empty some); "
                f"was {before:.1%}.")
    settings = (ratio, "manual", skip_first, skip_last, round_to, allow_empty)
    return _plan(session, settings, pairs, order, overlay, note)


def apply_preset(name):
    """Preset button -> (ratio, allocation, skip_first, skip_last); the wiring chains replan."""
    return PRESETS[name]


@ui_errors
def edit_layers(session, round_to, allow_empty, order, overlay, *values):
    """A per-layer slider moved (values: attention units removed, MLP % removed, per layer): a manual plan in
    which only the moved layers change; the others keep their exact ratios. A position the plan cannot take
    (e.g. a layer without attention) snaps back with a warning."""
    spec, plan = session.editor_spec, session.plan
    if session.active_scores is None or plan is None or spec is None or len(values) != 2 * len(spec["units"]):
        raise gr.Error("Score the model first.", print_exception=False)
    pairs = [list(pair) for pair in plan.meta["layer_ratios"]]
    moved = {}
    for i, units in enumerate(spec["units"]):
        att, mlp = float(values[2 * i]), float(values[2 * i + 1])
        if abs(att - spec["att"][i]) > 1e-9:
            pairs[i][0], moved[("att", i)] = att / max(units, 1), att
        if abs(mlp - spec["mlp"][i]) > 1e-9:
            pairs[i][1], moved[("mlp", i)] = mlp / 100.0, mlp
    if not moved:
        return views(session, order, overlay, editor=False)
    try:
        _make(session, None, "manual", 0, 0, round_to, allow_empty, pairs)
    except BipError as err:
        return not_applied(session, err, order, overlay, _allocation(session, "manual"))
    for (kind, i), value in moved.items():  # the sliders stay where the user put them
        spec[kind][i] = value
    session.editor_spec = spec
    return views(session, order, overlay, editor=False)

"""Endpoints for scripts only (gradio_client), without figures: a lean plan, and the scores runs.

They act on the caller's session, found by its Gradio session hash in the session registry (a
client keeps one session for all its calls), so they work after /load_model and /score.
"""
import gradio as gr

from . import context, plan_events
from .jobs import require_scores, ui_errors
from .score_panel import scores_info


def _session(request: gr.Request):
    session = context.studio().registry.get(getattr(request, "session_hash", None))
    if session is None:
        raise gr.Error("This session has no model yet: call /load_model, then /score.", print_exception=False)
    return session


@ui_errors
def plan(ratio: float = 0.2, allocation: str = "uniform", skip_first: int = 0, skip_last: int = 0,
         round_to: int = 1, allow_empty: bool = False, ratios_json: str = "", request: gr.Request = None) -> dict:
    """The plan from the active scores, like /make_plan but without the heatmap (about 1 KB instead of
    170 KB). Returns {applied, message (why not, when not applied: the previous plan stays), allocation,
    summary, layer_ratios}. allocation: uniform, global, global-energy, global-std or manual (ratios_json:
    one [attention, mlp] removed pair per layer)."""
    session = _session(request)
    require_scores(session)
    return plan_events.plan_only(session, ratio, allocation, int(skip_first), int(skip_last), int(round_to),
                                 bool(allow_empty), ratios_json)


@ui_errors
def select_scores(label: str = "", request: gr.Request = None) -> dict:
    """Switch the active scores run (plans are made from it) to `label`, one of `runs`; an empty label only
    lists them. Returns {active, runs, scores (summary of the active run)}."""
    session = _session(request)
    require_scores(session)
    if label:
        if label not in session.scores:
            raise gr.Error(f"No scores run '{label}'. Runs of this session: {', '.join(session.scores)}.",
                           print_exception=False)
        session.active = label
    return {"active": session.active, "runs": list(session.scores), "scores": scores_info(session.active_scores)}


def wire() -> None:
    gr.api(plan, api_name="plan")
    gr.api(select_scores, api_name="select_scores")

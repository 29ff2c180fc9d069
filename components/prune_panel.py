"""Step 3: apply the current plan to a copy of the original: a physically smaller model, per session."""
import time
from types import SimpleNamespace

import gradio as gr

from bip_core.architecture import count_params, model_geometry
from bip_core.formatting import format_params
from bip_core.sequential import REFIT_ALPHA, compensation_record, compress_like, needs_pass
from bip_core.surgery import prune_model

from . import compensation as compensation_controls
from . import status_bar, texts
from .context import attach
from .jobs import cancellable, heavy, require_model, require_plan, require_scores, ui_errors

HEADERS = ["", "original", "pruned", "change"]


def _change(before, after) -> str:
    return f"{(after - before) / before:+.1%}" if before else ""


def build():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            plan_info = gr.Markdown("No plan yet: score the model and choose a ratio (step 2).",
                                    label="plan info", elem_classes=["bip-status"])
            with gr.Row(equal_height=True):
                compensation, sequential = compensation_controls.build()
                run = gr.Button("Prune", variant="primary", elem_id="bip-prune-btn", min_width=140)
            status = gr.Markdown("", label="message", elem_classes=["bip-status"], min_height=56,
                                 elem_id="bip-prune-status")
            table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, elem_id="bip-prune-table",
                                 label="Before / after", wrap=True)
            next_step = gr.Button("Next: compare it with the original →", size="sm", variant="secondary",
                                  elem_classes=["bip-next"])
            details = gr.JSON(label="Pruned model summary", open=False)
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(texts.PRUNE, elem_classes=["bip-teach"])
    return SimpleNamespace(plan_info=plan_info, compensation=compensation, sequential=sequential, run=run,
                           status=status, table=table, details=details, next_step=next_step)


def plan_info(session) -> str:
    """What Prune will apply (shown when the tab opens)."""
    s = session.plan_summary if session is not None else None
    if not s:
        return "No plan yet: score the model and choose a ratio (step 2)."
    text = (f"Will apply the current plan: **{s['removed_attention_mlp']:.1%}** of attention+MLP parameters "
            f"({s['removed_total']:.1%} of all), allocation *{s.get('allocation')}*, from scores "
            f"*{s.get('scores_label')}*.")
    if session.pruned is not None and session.pruned_from is session.plan:
        text += " This plan is already pruned; pruning again replaces the pruned model."
    elif session.pruned is not None:
        text += " The pruned model below comes from an earlier plan; press Prune to apply this one."
    return text


def _totals(model) -> dict:
    geoms = model_geometry(model)
    params = count_params(model)
    return {"params": params["total"], "attention_mlp": params["attention_mlp"],
            "heads": sum(g.num_attention_heads for g in geoms), "kv_heads": sum(g.num_key_value_heads for g in geoms),
            "channels": sum(g.intermediate_size for g in geoms)}


def summary_rows(before: dict, after: dict, seconds: float, calibration_seconds: float | None = None) -> list[list]:
    rows = [
        ["parameters", format_params(before["params"], 2), format_params(after["params"], 2),
         _change(before["params"], after["params"])],
        ["attention + MLP parameters", format_params(before["attention_mlp"], 2),
         format_params(after["attention_mlp"], 2), _change(before["attention_mlp"], after["attention_mlp"])],
        ["query heads (all layers)", before["heads"], after["heads"], _change(before["heads"], after["heads"])],
        ["KV heads (all layers)", before["kv_heads"], after["kv_heads"], _change(before["kv_heads"], after["kv_heads"])],
        ["MLP channels (all layers)", before["channels"], after["channels"],
         _change(before["channels"], after["channels"])],
        ["memory (float32 weights)", f"{before['params'] * 4 / 2**20:.0f} MiB", f"{after['params'] * 4 / 2**20:.0f} MiB",
         _change(before["params"], after["params"])],
    ]
    if calibration_seconds is not None:
        rows.append(["calibration pass (refit / sequential)", "", f"{calibration_seconds:.2f} s", ""])
    return rows + [["surgery time", "", f"{seconds:.2f} s", ""]]


def _calibrate(session, loaded, plan, scores, compensation: str, sequential: bool, progress):
    """compress_like: the plan (units chosen layer by layer when sequential), the scores measured on the way
    and the refit columns; as given, with no pass, when neither refit nor sequential is asked."""
    def report(done, total, desc=None):
        progress(done / max(total, 1), desc=f"Calibration pass ({desc or 'layer by layer'}): step {done} of {total}")

    if needs_pass(compensation, sequential):
        progress(0, desc="Calibration pass: preparing calibration text ...")
    return compress_like(loaded.model, loaded.tokenizer, plan, scores, sequential=sequential,
                         compensation=compensation, alpha=REFIT_ALPHA, progress=cancellable(session, report))


def _prune(session, loaded, plan, scores, compensation: str, sequential: bool, progress):
    """(pruned model, the plan it applies, surgery seconds, calibration seconds or None when no pass ran)."""
    t0 = time.perf_counter()
    done = _calibrate(session, loaded, plan, scores, compensation, sequential, progress)
    calibration = time.perf_counter() - t0 if needs_pass(compensation, sequential) else None
    progress(0.95, desc="Slicing heads and channels ...")
    t0 = time.perf_counter()
    pruned = prune_model(loaded.model, done.plan, bias_compensation=compensation == "bias", scores=done.scores,
                         refit=done.refit)
    return pruned, done.plan, time.perf_counter() - t0, calibration


def _record(session, pruned, plan, compensation: str, sequential: bool, seconds: float, calibration) -> dict:
    """Keep the pruned model in the session with its label and summary (shown, exported)."""
    session.pruned, session.pruned_plan, session.pruned_from = pruned, plan, session.plan
    session.prune_count += 1
    s = session.plan_summary
    tag = "" if compensation == "none" and not sequential else ", " + compensation_controls.describe(compensation,
                                                                                                     sequential)
    session.pruned_label = (f"pruned #{session.prune_count}: {s['removed_attention_mlp']:.0%} {s.get('allocation')}, "
                            f"{(s.get('scores_label') or '').split(' · ')[0]}{tag}")
    after = _totals(pruned)
    session.pruned_summary = {**{k: v for k, v in s.items() if k != "layers"}, "label": session.pruned_label,
                              "params_after_plan": s["params_after"], "params_after": after["params"],
                              "attention_mlp_after": after["attention_mlp"],
                              **compensation_record(compensation, sequential),
                              "refit_alpha": REFIT_ALPHA if compensation == "refit" else None,
                              "seconds": round(seconds, 3),
                              "calibration_seconds": None if calibration is None else round(calibration, 3)}
    return after


def _message(session, before: dict, after: dict, compensation: str, sequential: bool, seconds: float,
             calibration) -> str:
    s = session.plan_summary
    note = ""
    if after["params"] != s["params_after"]:
        note = f" (the plan predicted {format_params(s['params_after'], 2)}: bias terms added by compensation)"
    how = f"Compensation: **{compensation}**; sequential: **{'on' if sequential else 'off'}**"
    if calibration is not None:
        how += f" (calibration pass {calibration:.1f} s)"
    return (f"**{session.pruned_label}**: {format_params(before['params'], 2)} → "
            f"**{format_params(after['params'], 2)}** parameters{note} in {seconds:.2f} s. {how}. "
            "Compare it with the original in step 4.")


@ui_errors
def run_prune(session, compensation, sequential, request: gr.Request, progress=gr.Progress()):
    """Prune a copy of the loaded model with the current plan. compensation: none, bias (FLAP's mean) or refit
    (ridge least squares of the kept o_proj/down_proj columns; a bool is read as the former bias checkbox:
    True = bias). sequential: choose each layer's units on the pruned layers' outputs (Wanda-sp's original).
    Refit and sequential run one more calibration pass with the scores' method and text.
    Returns: message, before/after table, pruned model summary, plan info, pipeline."""
    attach(session, request)
    loaded = require_model(session)
    scores = require_scores(session)
    plan = require_plan(session)
    compensation, sequential = compensation or "none", bool(sequential)
    compensation_controls.check(scores, compensation, sequential)
    with heavy(session, "Pruning", progress, originals=[loaded.model]):
        session.drop_pruned()  # free the previous pruned model before building the next one
        pruned, applied, seconds, calibration = _prune(session, loaded, plan, scores, compensation, sequential,
                                                       progress)
    before = _totals(loaded.model)
    after = _record(session, pruned, applied, compensation, sequential, seconds, calibration)
    msg = _message(session, before, after, compensation, sequential, seconds, calibration)
    return msg, summary_rows(before, after, seconds, calibration), session.pruned_summary, plan_info(session), \
        status_bar.render(session)

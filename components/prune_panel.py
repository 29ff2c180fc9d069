"""Step 3: apply the current plan to a copy of the original: a physically smaller model, per session."""
import time
from types import SimpleNamespace

import gradio as gr

from bip_core.architecture import count_params, model_geometry
from bip_core.surgery import prune_model
from bip_core.formatting import format_params
from bip_core.scores import has_mean_inputs, recommends_compensation

from . import status_bar, texts
from .context import attach
from .jobs import heavy, require_model, require_plan, require_scores, ui_errors

HEADERS = ["", "original", "pruned", "change"]


def _change(before, after) -> str:
    return f"{(after - before) / before:+.1%}" if before else ""


def build():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            plan_info = gr.Markdown("No plan yet: score the model and choose a ratio (step 2).",
                                    label="plan info", elem_classes=["bip-status"])
            with gr.Row(equal_height=True):
                bias = gr.Checkbox(False, label="Bias compensation (FLAP-style)",
                                   info="put the removed units' mean output back as a bias")
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
    return SimpleNamespace(plan_info=plan_info, bias=bias, run=run, status=status, table=table, details=details,
                           next_step=next_step)


def compensation_default(session):
    """Tick bias compensation for centred scores (FLAP, LLM-BIP's default 'std'): they rank units by the
    change left after it, so they are meant to be pruned with it (as the library's sweep does)."""
    scores = session.active_scores if session is not None else None
    if scores is None:
        return gr.update()
    has_means = has_mean_inputs(scores)
    centred = recommends_compensation(scores)
    info = ("recommended for these scores: they measure the change left after compensation" if centred else
            "these scores measure the full change; compensation is optional" if has_means else
            "needs scores with mean inputs (LLM-BIP, FLAP, Wanda-sp)")
    return gr.update(value=centred, info=info, interactive=has_means)


def plan_info(session) -> str:
    """What Prune will apply (shown when the tab opens)."""
    s = session.plan_summary if session is not None else None
    if not s:
        return "No plan yet: score the model and choose a ratio (step 2)."
    text = (f"Will apply the current plan: **{s['removed_attention_mlp']:.1%}** of attention+MLP parameters "
            f"({s['removed_total']:.1%} of all), allocation *{s.get('allocation')}*, from scores "
            f"*{s.get('scores_label')}*.")
    if session.pruned is not None and session.pruned_plan is session.plan:
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


def summary_rows(before: dict, after: dict, seconds: float) -> list[list]:
    return [
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
        ["surgery time", "", f"{seconds:.2f} s", ""],
    ]


@ui_errors
def run_prune(session, bias, request: gr.Request, progress=gr.Progress()):
    """Prune a copy of the loaded model with the current plan (`bias`: FLAP-style bias compensation).
    Returns: message, before/after table, pruned model summary, plan info, pipeline."""
    attach(session, request)
    loaded = require_model(session)
    scores = require_scores(session)
    plan = require_plan(session)
    with heavy(session, "Pruning", progress, originals=[loaded.model]):
        progress(0.2, desc="Slicing heads and channels ...")
        session.drop_pruned()  # free the previous pruned model before building the next one
        t0 = time.perf_counter()
        pruned = prune_model(loaded.model, plan, bias_compensation=bool(bias), scores=scores)
        seconds = time.perf_counter() - t0
    before, after = _totals(loaded.model), _totals(pruned)
    session.pruned, session.pruned_plan = pruned, plan
    session.prune_count += 1
    s = session.plan_summary
    session.pruned_label = (f"pruned #{session.prune_count}: {s['removed_attention_mlp']:.0%} {s.get('allocation')}, "
                            f"{(s.get('scores_label') or '').split(' · ')[0]}" + (", bias comp." if bias else ""))
    session.pruned_summary = {**{k: v for k, v in s.items() if k != "layers"}, "label": session.pruned_label,
                              "params_after_plan": s["params_after"], "params_after": after["params"],
                              "attention_mlp_after": after["attention_mlp"],
                              "bias_compensation": bool(bias), "seconds": round(seconds, 3)}
    note = ""
    if after["params"] != s["params_after"]:
        note = f" (the plan predicted {format_params(s['params_after'], 2)}: bias terms added by compensation)"
    msg = (f"**{session.pruned_label}**: {format_params(before['params'], 2)} → "
           f"**{format_params(after['params'], 2)}** parameters{note} in {seconds:.2f} s. "
           "Compare it with the original in step 4.")
    return msg, summary_rows(before, after, seconds), session.pruned_summary, plan_info(session), \
        status_bar.render(session)

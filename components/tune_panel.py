"""Step 2b: from scores to a plan, instantly: global ratio, allocation, presets, per-layer sliders,
the live size readout and the overlay of what the plan removes. No re-scoring, ever."""
import json
from types import SimpleNamespace

import gradio as gr

from bip_core.formatting import format_params
from bip_core.plan import ALLOCATIONS

from . import heatmaps, texts

ALLOCATION_LABELS = {"uniform": "uniform", "global": "global, relative changes",
                     "global-energy": "global, squared changes (LLM-BIP)",
                     "global-std": "global, standardised (FLAP)", "mlp-only": "MLP only (attention kept)",
                     "paper": "the method's own rule (may remove less)",
                     "paper-scaled": "the method's own rule, scaled to the ratio", "manual": "manual (per-layer sliders)"}
PRESETS = {  # name -> (ratio, allocation, skip_first, skip_last)
    "Paper-style uniform 20%": (0.2, "uniform", 0, 0),
    "Paper-style uniform 50%": (0.5, "uniform", 0, 0),
    "Global (energy) 20%": (0.2, "global-energy", 0, 0),
    "FLAP-style global 20%": (0.2, "global-std", 0, 0),
}
ROUND_CHOICES = [("1 (exact)", "1"), ("8", "8"), ("16", "16"), ("32", "32"), ("64", "64")]  # strings, as the API shows


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def readout_html(summary: dict | None, message: str = "") -> str:
    """The live size readout: removed share of attention+MLP, of all parameters, what remains."""
    if not summary:
        warn = f'<div class="bip-warn">{message}</div>' if message.startswith("Not applied") else ""
        text = "Score the model to see a plan." if warn else (message or "Score the model to see a plan.")
        return f'<div class="bip-readout bip-empty">{text}{warn}</div>'
    layers = summary["layers"]
    tiles = [
        (f"{summary['removed_attention_mlp']:.1%}", "of attention + MLP parameters removed"),
        (f"{summary['removed_total']:.1%}", "of all parameters removed"),
        (format_params(summary["params_after"]), f"parameters remain (of {format_params(summary['params_before'])})"),
    ]
    att = [f"{l['attention_kept']}" for l in layers]
    details = (f"attention units kept per layer: <b>{_span([l['attention_kept'] for l in layers])}</b> of "
               f"{_span([l['attention_total'] for l in layers])} · MLP channels kept per layer: "
               f"<b>{_span([l['mlp_kept'] for l in layers])}</b> of {_span([l['mlp_total'] for l in layers])}")
    del att
    ratio = summary.get("ratio_requested")
    origin = f"{summary.get('allocation')}" + (f", ratio {ratio:.0%}" if isinstance(ratio, (int, float)) else "")
    body = "".join(f'<div class="bip-big"><div class="bip-big-value">{v}</div><div class="bip-big-label">{t}</div></div>'
                   for v, t in tiles)
    warn = f'<div class="bip-warn">{message}</div>' if message else ""
    return (f'<div class="bip-readout"><div class="bip-bigs">{body}</div>'
            f'<div class="bip-readout-detail">{details}<br><span class="bip-muted">plan: {origin} · scores: '
            f'{summary.get("scores_label", "")}</span></div>{warn}</div>')


def editor_spec(session) -> dict | None:
    """What the per-layer editor shows (units per layer, the plan's removed units and MLP %), remembered in
    the session so that a slider move can tell which layer moved."""
    s = session.plan_summary
    if not s:
        session.editor_spec = None
        return None
    session.editor_version += 1  # always a change: the sliders re-render
    session.editor_spec = {
        "version": session.editor_version, "unit": heatmaps.UNIT_LABEL.get(s.get("unit"), "unit"),
        "units": [l["attention_total"] for l in s["layers"]],
        "att": [l["attention_total"] - l["attention_kept"] for l in s["layers"]],
        "mlp": [round(100 * (l["mlp_total"] - l["mlp_kept"]) / l["mlp_total"], 1) for l in s["layers"]]}
    return session.editor_spec


def ratios_text(plan) -> str:
    if plan is None:
        return ""
    return json.dumps([[round(a, 6), round(m, 6)] for a, m in plan.meta["layer_ratios"]])  # exact counts back


def parse_ratios(text: str, n_layers: int):
    try:
        pairs = json.loads(text)
        assert isinstance(pairs, list) and len(pairs) == n_layers
        return [(float(a), float(m)) for a, m in pairs]
    except Exception as err:  # noqa: BLE001 -- any malformed text gets the same explanation
        raise gr.Error(f"Per-layer ratios must be a JSON list of {n_layers} [attention_ratio, mlp_ratio] pairs, "
                       f"e.g. [[0.333, 0.2], ...] (fractions removed per layer).", print_exception=False) from err


def build_controls():
    with gr.Group(elem_classes=["bip-box"]):
        gr.Markdown("### Plan", elem_classes=["bip-box-title"])
        with gr.Row(elem_classes=["bip-presets"]):
            presets = [gr.Button(name, size="sm", variant="secondary", min_width=120) for name in PRESETS]
        ratio = gr.Slider(0, 0.9, value=0.2, step=0.01, label="Ratio", elem_id="bip-ratio",
                          info="share of attention + MLP parameters to remove")
        allocation = gr.Radio([(ALLOCATION_LABELS.get(a, a), a) for a in ALLOCATIONS], value="uniform", elem_id="bip-allocation",
                              label="Allocation across layers")
        with gr.Row():
            skip_first = gr.Slider(0, 8, value=0, step=1, label="Skip first layers", elem_id="bip-skip-first")
            skip_last = gr.Slider(0, 8, value=0, step=1, label="Skip last layers", elem_id="bip-skip-last")
        round_to = gr.Dropdown(ROUND_CHOICES, value="1", label="Round kept MLP channels to a multiple of",
                               info="multiples of 8 or 64 run faster on some hardware")
        allow_empty = gr.Checkbox(False, label="Allow removing whole attention sub-blocks",
                                  info="otherwise every layer keeps at least one attention unit")
    with gr.Accordion("Ratios and allocation, explained", open=False):
        gr.Markdown(texts.RATIO + "\n\n" + texts.ALLOCATION, elem_classes=["bip-teach"])
    return SimpleNamespace(presets=presets, ratio=ratio, allocation=allocation, skip_first=skip_first,
                           skip_last=skip_last, round_to=round_to, allow_empty=allow_empty)


def build_view():
    readout = gr.HTML(readout_html(None), label="readout", elem_id="bip-readout")
    with gr.Row(equal_height=True, elem_classes=["bip-viewbar"]):
        shown = gr.Dropdown([], value=None, label="Scores shown (and planned from)", scale=3, elem_id="bip-shown",
                            info="every method you score stays here for comparison")
        order = gr.Radio([("sorted by score", "sorted"), ("channel index", "index")], value="sorted",
                         label="MLP channels", scale=2)
        overlay = gr.Checkbox(True, label="Show what the plan removes", scale=1)
    figure = gr.Plot(heatmaps.empty_figure("No scores yet: load a model, then press Score."), label="heatmap",
                     show_label=False,
                     elem_id="bip-heatmap")
    gr.Markdown(texts.OVERLAY, elem_classes=["bip-teach", "bip-small"])
    with gr.Accordion("Per-block attention factor: Lipschitz bound and measured gain", open=True):
        lipschitz = gr.Plot(heatmaps.empty_figure("No scores yet.", height=240), label="attention factor",
                            show_label=False,
                            elem_id="bip-lipschitz")
    editor = gr.State(None)
    editor_box = gr.Accordion("Per-layer ratios (sliders)", open=False, elem_id="bip-layer-editor")
    with gr.Accordion("Plan details and files", open=False):
        with gr.Row():
            ratios = gr.Textbox(label="Per-layer ratios [attention, MLP] removed (editable JSON)", lines=3,
                                max_lines=6, scale=4, elem_id="bip-ratios-json")
            apply_ratios = gr.Button("Apply as manual plan", size="sm", scale=1)
        with gr.Row():
            scores_info = gr.JSON(label="Scores", open=False)
            plan_json = gr.JSON(label="Plan summary", open=False)
        with gr.Row(equal_height=True):
            scores_file = gr.File(label="Scores (JSON)", interactive=False)
            with gr.Column():
                save_plan = gr.Button("Save the current plan as a file", size="sm")
                plan_file = gr.File(label="Plan (JSON)", interactive=False)
    return SimpleNamespace(readout=readout, shown=shown, order=order, overlay=overlay, figure=figure,
                           lipschitz=lipschitz, editor=editor, editor_box=editor_box, ratios=ratios,
                           apply_ratios=apply_ratios, scores_info=scores_info, plan_json=plan_json,
                           scores_file=scores_file, save_plan=save_plan, plan_file=plan_file)


# ------------------------------------------------------------------------------------- handlers

def figure_for(session, order, overlay):
    scores = session.active_scores
    if scores is None:
        return heatmaps.empty_figure("No scores yet: load a model, then press Score.")
    d = scores.to_dict()
    removed = heatmaps.removed_sets(session.plan.layers, d) if (overlay and session.plan is not None) else None
    title = f"Scores: {session.active}" + (" — red = removed by the current plan" if removed is not None else "")
    return heatmaps.scores_figure(d, removed, order=order or "sorted", title=title)


def show_scores(session, label, order, overlay):
    """'Scores shown' dropdown: switch the active scores (the plan follows via replan)."""
    if label and label in session.scores:
        session.active = label
    return figure_for(session, order, overlay)


def scores_choices(session):
    return gr.update(choices=list(session.scores), value=session.active)


def save_plan(session):
    """The current plan as a JSON file (kept units and channels per layer, ratios, calibration)."""
    if session.plan is None:
        raise gr.Error("No plan yet: score the model first.", print_exception=False)
    path = session.tmp_dir() / "plan.json"
    session.plan.save(path)
    return str(path)


def _editor_header(spec, extra_class: str) -> None:
    with gr.Row(elem_classes=["bip-layer-row", "bip-layer-head", extra_class], equal_height=True):
        gr.HTML('<div class="bip-layer-name">layer</div>', elem_classes=["bip-layer-cell"], padding=False)
        gr.HTML(f"<div>{spec['unit']}s removed (of {max(spec['units'])})</div>", scale=2, min_width=120,
                padding=False)
        gr.HTML("<div>MLP channels removed (%)</div>", scale=3, min_width=160, padding=False)


def render_editor(spec, on_edit):
    """Body of the per-layer editor (called inside @gr.render): two sliders per layer.

    on_edit(sliders) wires their release events."""
    if not spec:
        gr.Markdown("Score the model to edit per-layer ratios.", elem_classes=["bip-muted"])
        return
    gr.Markdown(f"Per layer: **{spec['unit']}s removed** and **% of MLP channels removed**. "
                "Moving one switches the allocation to *manual* and recomputes the plan at once.",
                elem_classes=["bip-small"])
    sliders = []
    with gr.Column(elem_classes=["bip-layer-grid"]):  # two layers per row on wide screens (assets/style.css)
        for extra in ("", "bip-layer-head-extra"):
            _editor_header(spec, extra)
        for i, (units, a, m) in enumerate(zip(spec["units"], spec["att"], spec["mlp"])):
            with gr.Row(elem_classes=["bip-layer-row"], equal_height=True):
                gr.HTML(f'<div class="bip-layer-name">layer {i}</div>', elem_classes=["bip-layer-cell"],
                        padding=False)
                sliders.append(gr.Slider(0, units, value=a, step=1, label=f"layer {i}: {spec['unit']}s removed",
                                         show_label=False, key=f"att-{i}", preserved_by_key=None, interactive=True,
                                         elem_classes=["bip-att-slider"], scale=2, min_width=120))
                sliders.append(gr.Slider(0, 99, value=m, step=0.1, label=f"layer {i}: MLP % removed", show_label=False,
                                         key=f"mlp-{i}", preserved_by_key=None, interactive=True,
                                         elem_classes=["bip-mlp-slider"],
                                         scale=3, min_width=160))
    on_edit(sliders)

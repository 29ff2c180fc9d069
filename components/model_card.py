"""Step 1: pick and load a model; show its architecture card."""
import html
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from bip_core.default_model import DEFAULT_NAME
from bip_core.formatting import format_params

from . import status_bar, texts
from .context import attach, studio
from .jobs import heavy, ui_errors


def _tile(label: str, value, hint: str = "") -> str:
    title = f' title="{html.escape(hint)}"' if hint else ""
    return (f'<div class="bip-tile"{title}><div class="bip-tile-value">{html.escape(str(value))}</div>'
            f'<div class="bip-tile-label">{html.escape(label)}</div></div>')


def card_html(info: dict | None) -> str:
    """The architecture card from `LoadedModel.info()`."""
    if not info:
        return '<div class="bip-empty">No model loaded yet. Pick one and press <b>Load</b>.</div>'
    n_rep = info.get("n_rep")
    attention = info.get("attention", "")
    if attention == "GQA" and isinstance(n_rep, int):
        attention = f"GQA · {n_rep} query heads per KV head"
    share = info["params_attention_mlp"] / info["params"] if info.get("params") else 0
    tiles = [
        _tile("family", info.get("family")),
        _tile("layers", info.get("layers")),
        _tile("hidden size", info.get("hidden")),
        _tile("query heads", info.get("heads")),
        _tile("KV heads", info.get("kv_heads")),
        _tile("head dim", info.get("head_dim")),
        _tile("MLP channels", info.get("intermediate"), "intermediate size: prunable channels per layer"),
        _tile("vocabulary", info.get("vocab")),
        _tile("parameters", format_params(info["params"])),
        _tile("attention + MLP", f"{format_params(info['params_attention_mlp'])} ({share:.0%})",
              "the prunable part: attention and MLP weights of all layers"),
    ]
    if info.get("device"):  # serving settings BIP_DEVICE / BIP_DTYPE, as resolved on this machine
        tiles += [_tile("device", info["device"], "where the model computes (BIP_DEVICE)"),
                  _tile("dtype", info.get("dtype"), "the weights' dtype (BIP_DTYPE)")]
    note = "" if info.get("spec") == "default" else (info.get("note") or "")  # the default's note is beside
    spec = str(info.get("spec"))
    name = DEFAULT_NAME if spec == "default" else Path(spec.rstrip("/")).name or spec
    title = html.escape(name) + (f' <span class="bip-muted">({html.escape(spec)})</span>' if name != spec else "")
    return (f'<div class="bip-card"><div class="bip-card-title">{title}'
            f'<span class="bip-badge">{html.escape(attention)}</span></div>'
            f'<div class="bip-tiles">{"".join(tiles)}</div>'
            + (f'<div class="bip-note">{html.escape(note)}</div>' if note else "") + "</div>")


def build():
    st = studio()
    choices = st.store.choices()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row(equal_height=False, elem_id="bip-load-row"):
                spec = gr.Dropdown(choices=choices, value=choices[0], label="Model",
                                   allow_custom_value=not st.settings.public, scale=4,
                                   info=("Pick one of the models this server offers." if st.settings.public else
                                         "'default' (SmolLM2-135M-Instruct, offline), a local folder, "
                                         "or a Hub id such as org/name (needs internet)."))
                load = gr.Button("Load model", variant="primary", scale=1, min_width=140, elem_id="bip-load-btn")
            status = gr.Markdown("", label="message", elem_classes=["bip-status"], min_height=56, elem_id="bip-load-status")
            card = gr.HTML(card_html(None), label="model card", elem_id="bip-model-card")
            gr.Markdown(texts.DEFAULT_MODEL_NOTE, elem_classes=["bip-teach", "bip-small"])
            next_step = gr.Button("Next: score it →", size="sm", variant="secondary", elem_classes=["bip-next"])
        with gr.Column(scale=2, min_width=300):
            gr.Markdown(texts.MODEL, elem_classes=["bip-teach"])
            with gr.Accordion("What are attention units? (GQA)", open=False):
                gr.Markdown(texts.GQA, elem_classes=["bip-teach"])
    return SimpleNamespace(spec=spec, load=load, card=card, status=status, next_step=next_step)


@ui_errors
def load_model(session, spec, request: gr.Request, progress=gr.Progress()):
    """Load (or reuse) the shared original for `spec`; the session's scores/plan/pruned model reset."""
    attach(session, request)
    st = studio()
    spec = st.store.check_allowed(spec)
    t0 = time.perf_counter()
    with heavy(session, "Loading a model", progress):
        progress(0.1, desc=f"Loading {spec} ...")
        loaded = st.store.get(spec)
    session.reset_model(loaded)
    msg = f"Loaded **{spec}** ({time.perf_counter() - t0:.1f} s). Next: score it in step 2."
    return card_html(session.model_info), status_bar.render(session), msg

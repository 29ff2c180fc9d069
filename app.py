"""BIP Studio: the Gradio app (also the Hugging Face Space entry point: `python app.py`).

Layout in components/ (one idea per file); the event wiring is components/wiring.py, one function per
tab. The UI calls bip_core only. Serving settings come from the environment (components/settings.py): BIP_ALLOWED_MODELS,
BIP_MAX_PARAMS, BIP_CONCURRENCY, BIP_SESSION_TTL, BIP_HOST/BIP_PORT.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from components import (compare_panel, context, export_panel, model_card, prune_panel, score_panel,  # noqa: E402
                        status_bar, texts, tune_panel, wiring)
from components.session import StudioSession, delete_callback  # noqa: E402
from components.settings import Settings, from_env  # noqa: E402

ROOT = Path(__file__).resolve().parent
CSS_PATH = ROOT / "assets" / "style.css"
JS_PATH = ROOT / "assets" / "chat_scroll.js"
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def theme():
    # System fonts only: the default theme would fetch Google Fonts, which an offline machine cannot reach.
    return gr.themes.Soft(primary_hue="violet", secondary_hue="amber", neutral_hue="slate",
                          font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def build(settings: Settings | None = None, store=None) -> gr.Blocks:
    """The whole app. `settings`/`store` default to the environment and a fresh shared-model store."""
    studio = context.init(settings or from_env(), store)
    with gr.Blocks(title="BIP Studio", delete_cache=(1800, 3600)) as demo:
        session = gr.State(StudioSession(), delete_callback=delete_callback)
        with gr.Row(elem_id="bip-header"):
            gr.Markdown(texts.INTRO, elem_id="bip-intro")
        status = gr.HTML(status_bar.render(StudioSession()), label="pipeline", elem_id="bip-status-strip")
        with gr.Tabs(elem_id="bip-tabs") as tabs:
            with gr.Tab("1 · Model", id="model"):
                m = model_card.build()
            with gr.Tab("2 · Score & tune", id="tune"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=380, elem_id="bip-sidebar"):
                        s = score_panel.build()
                        t = tune_panel.build_controls()
                    with gr.Column(scale=5, elem_id="bip-main"):
                        v = tune_panel.build_view()
            with gr.Tab("3 · Prune", id="prune") as prune_tab:
                p = prune_panel.build()
            with gr.Tab("4 · Compare", id="compare"):
                c = compare_panel.build()
            with gr.Tab("5 · Export", id="export") as export_tab:
                e = export_panel.build()
        gr.Markdown(f"<div class='bip-footer'>BIP Studio · LLM-BIP (arXiv 2412.06419) · "
                    f"{'models: ' + ', '.join(studio.settings.allowed_models) if studio.settings.public else 'local'}"
                    f"</div>")
        wiring.wire(demo, wiring.Ui(session, status, tabs, m, s, t, v, p, c, e, prune_tab, export_tab))
    return demo


def serve(demo: gr.Blocks, settings: Settings | None = None, **overrides):
    """Queue + launch with the app's theme and CSS. `overrides` go to `launch` (tests: port, prevent_thread_lock)."""
    settings = settings or context.studio().settings
    context.studio().registry.start_sweeper()
    demo.queue(default_concurrency_limit=4, max_size=64)
    options = dict(server_name=settings.host, server_port=settings.port, share=False, theme=theme(),
                   css_paths=[CSS_PATH], js=JS_PATH.read_text(), show_error=False,
                   footer_links=["api", "settings"])
    options.update(overrides)
    return demo.launch(**options)


demo = build()  # module level, as Hugging Face Spaces and `gradio app.py` expect

if __name__ == "__main__":
    # `make demo` / a Space: the first model of the picker (the default) is loaded before serving, so it is in
    # memory when the page opens and "Load model" answers at once.
    context.studio().store.get(context.studio().store.choices()[0])
    serve(demo)

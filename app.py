"""BIP Studio: the Gradio app (also the Hugging Face Space entry point: `python app.py`).

Layout in components/ (one idea per file); all event wiring is here, in `wire()`. The UI calls
bip_core only. Serving settings come from the environment (components/settings.py): BIP_ALLOWED_MODELS,
BIP_MAX_PARAMS, BIP_CONCURRENCY, BIP_SESSION_TTL, BIP_HOST/BIP_PORT.
"""
import functools
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from components import (compare_panel, context, export_panel, heatmaps, model_card, prune_panel,  # noqa: E402
                        score_panel, status_bar, texts, tune_panel)
from components.jobs import precheck  # noqa: E402
from components.session import StudioSession, delete_callback  # noqa: E402
from components.settings import Settings, from_env  # noqa: E402

ROOT = Path(__file__).resolve().parent
CSS_PATH = ROOT / "assets" / "style.css"
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
HEAVY = dict(concurrency_limit=None, trigger_mode="once")  # jobs.heavy() enforces the real limit
LIGHT = dict(show_progress="hidden", trigger_mode="always_last", api_visibility="private")


def theme():
    # System fonts only: the default theme would fetch Google Fonts, which an offline machine cannot reach.
    return gr.themes.Soft(primary_hue="violet", secondary_hue="amber", neutral_hue="slate",
                          font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def build(settings: Settings | None = None, store=None) -> gr.Blocks:
    """The whole app. `settings`/`store` default to the environment and a fresh shared-model store."""
    studio = context.init(settings or from_env(), store)
    with gr.Blocks(title="BIP Studio", delete_cache=(1800, 3600)) as demo:
        session = gr.State(StudioSession, delete_callback=delete_callback)
        with gr.Row(elem_id="bip-header"):
            gr.Markdown(texts.INTRO, elem_id="bip-intro")
        status = gr.HTML(status_bar.render(StudioSession()), elem_id="bip-status-strip")
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
        wire(demo, session, status, tabs, m, s, t, v, p, c, e, prune_tab, export_tab)
    return demo


def wire(demo, session, status, tabs, m, s, t, v, p, c, e, prune_tab, export_tab):
    """Every event of the app, in one place."""
    m.next_step.click(lambda: gr.Tabs(selected="tune"), None, [tabs], queue=False, api_visibility="private")
    p.next_step.click(lambda: gr.Tabs(selected="compare"), None, [tabs], queue=False, api_visibility="private")

    def guarded(button, fn, inputs, outputs, api_name, progress_on, needs=None):
        """A heavy job. A quick queued pre-check (not busy, prerequisites there) answers a second click
        or a missing step with a toast and leaves the outputs alone; then the job runs, with its
        progress bar (and any error badge) on the step's status line `progress_on`."""
        pre = button.click(functools.partial(precheck, needs=needs), [session], None, trigger_mode="multiple",
                           concurrency_limit=None, show_progress="hidden", api_visibility="private")
        return pre.success(fn, inputs, outputs, api_name=api_name, show_progress_on=[progress_on], **HEAVY)

    plan_inputs = [session, t.ratio, t.allocation, t.skip_first, t.skip_last, t.round_to, t.allow_empty, v.ratios,
                   v.order, v.overlay]
    plan_outputs = [v.readout, v.figure, v.plan_json, v.ratios, status, v.editor]

    # 1 · Model: loading resets everything derived from the previous model.
    def reset_views(sess) -> dict:
        table, ppl_plot, zs_plot, speed_plot = compare_panel.results_view(sess)
        return {v.shown: gr.update(choices=[], value=None), v.readout: tune_panel.readout_html(None),
                v.figure: tune_panel.figure_for(sess, "sorted", True), v.lipschitz: score_panel.lipschitz_figure(sess),
                v.plan_json: None, v.ratios: "", v.editor: None, v.scores_info: None, v.scores_file: None,
                v.plan_file: None, s.status: "", p.plan_info: prune_panel.plan_info(sess), p.status: "", p.table: [],
                p.details: None, c.chat_original: [], c.chat_pruned: [], c.chat_info: "", c.status: "",
                c.table: table, c.ppl_plot: ppl_plot, c.zs_plot: zs_plot, c.speed_plot: speed_plot,
                e.info: export_panel.export_info(sess), e.status: "", e.file: None, e.listing: []}

    reset_outputs = list(reset_views(StudioSession()))
    guarded(m.load, model_card.load_model, [session, m.spec], [m.card, status, m.status], "load_model", m.status).success(
        reset_views, [session], reset_outputs, **LIGHT)

    # 2 · Score: the new scores join the session's runs and become the active ones; the plan follows.
    def after_score(sess):
        return (tune_panel.scores_choices(sess), score_panel.lipschitz_figure(sess),
                score_panel.scores_info(sess.active_scores), score_panel.save_scores(sess),
                prune_panel.compensation_default(sess))

    score_views = [v.shown, v.lipschitz, v.scores_info, v.scores_file, p.bias]
    s.method.change(score_panel.option_visibility, [s.method], s.options, queue=False, show_progress="hidden",
                    api_visibility="private")
    guarded(s.run, score_panel.run_score,
            [session, s.method, s.source, s.samples, s.seq_len, s.unit, s.seed, *s.options],
            [s.status, status, v.scores_info, v.scores_file], "score", s.status, "model").success(
        after_score, [session], score_views, **LIGHT).success(
        tune_panel.replan, plan_inputs, plan_outputs, **LIGHT)

    # 2 · Tune: every control recomputes the plan from the scores (no re-scoring).
    gr.on([t.ratio.release, t.allocation.input, t.skip_first.release, t.skip_last.release, t.round_to.input,
           t.allow_empty.input], tune_panel.replan, plan_inputs, plan_outputs, api_name="make_plan",
          **{**LIGHT, "api_visibility": "public"})
    for button in t.presets:
        button.click(functools.partial(tune_panel.apply_preset, button.value), None,
                     [t.ratio, t.allocation, t.skip_first, t.skip_last], queue=False, show_progress="hidden",
                     api_visibility="private").then(
            tune_panel.replan, plan_inputs, plan_outputs, **LIGHT)
    v.apply_ratios.click(lambda: "manual", None, [t.allocation], queue=False, api_visibility="private").then(
        tune_panel.replan, plan_inputs, plan_outputs, **LIGHT)
    v.save_plan.click(tune_panel.save_plan, [session], [v.plan_file], api_name="plan_file", show_progress="hidden")
    gr.on([v.order.input, v.overlay.input], tune_panel.figure_for, [session, v.order, v.overlay], [v.figure], **LIGHT)
    v.shown.input(tune_panel.show_scores, [session, v.shown, v.order, v.overlay], [v.figure], **LIGHT).success(
        after_score, [session], score_views, **LIGHT).success(
        tune_panel.replan, plan_inputs, plan_outputs, **LIGHT)

    with v.editor_box:
        @gr.render(inputs=[v.editor], triggers=[v.editor.change], show_progress="hidden")
        def layer_editor(spec):
            def wire_sliders(sliders):
                gr.on([sl.release for sl in sliders], tune_panel.edit_layers,
                      [session, t.round_to, t.allow_empty, v.order, v.overlay, *sliders],
                      [v.readout, v.figure, v.plan_json, v.ratios, status, t.allocation, v.editor],
                      **LIGHT)
            tune_panel.render_editor(spec, wire_sliders)

    # 3 · Prune
    prune_tab.select(prune_panel.plan_info, [session], [p.plan_info], **LIGHT)
    guarded(p.run, prune_panel.run_prune, [session, p.bias], [p.status, p.table, p.details, p.plan_info, status],
            "prune", p.status, "plan").success(export_panel.export_info, [session], [e.info], **LIGHT)

    # 4 · Compare
    results = [c.status, c.table, c.ppl_plot, c.zs_plot, c.speed_plot]
    chat_inputs = [session, c.prompt, c.max_new, c.temperature, c.gen_seed, c.chat_original, c.chat_pruned]
    chat_outputs = [c.chat_original, c.chat_pruned, c.prompt, c.chat_info]
    for trigger, api in ((c.send.click, dict(api_name="chat")), (c.prompt.submit, dict(api_visibility="private"))):
        trigger(compare_panel.check_chat, [session, c.prompt], None, trigger_mode="multiple", concurrency_limit=None,
                show_progress="hidden", api_visibility="private").success(
            compare_panel.chat, chat_inputs, chat_outputs, concurrency_limit=None, show_progress="hidden", **api)
    c.clear.click(compare_panel.clear_chat, None, [c.chat_original, c.chat_pruned, c.chat_info], queue=False,
                  api_visibility="private")
    for button, fn, inputs, name in ((c.ppl_run, compare_panel.run_perplexity, [c.ppl_source, c.ppl_windows], "perplexity"),
                                     (c.zs_run, compare_panel.run_zeroshot, [c.zs_tasks, c.zs_limit], "zeroshot"),
                                     (c.speed_run, compare_panel.run_speed, [c.speed_batches], "speed")):
        guarded(button, fn, [session, *inputs], results, name, c.status, "model")

    # 5 · Export
    export_tab.select(export_panel.export_info, [session], [e.info], **LIGHT)
    guarded(e.run, export_panel.run_export, [session], [e.status, e.file, e.listing], "export", e.status, "pruned")

    # Session end: free this tab's scores, pruned model and files (the shared original stays).
    def release(request: gr.Request):
        context.studio().registry.release(getattr(request, "session_hash", None))

    demo.unload(release)


def serve(demo: gr.Blocks, settings: Settings | None = None, **overrides):
    """Queue + launch with the app's theme and CSS. `overrides` go to `launch` (tests: port, prevent_thread_lock)."""
    settings = settings or context.studio().settings
    context.studio().registry.start_sweeper()
    demo.queue(default_concurrency_limit=4, max_size=64)
    options = dict(server_name=settings.host, server_port=settings.port, share=False, theme=theme(),
                   css_paths=[CSS_PATH], show_error=False, footer_links=["api", "settings"])
    options.update(overrides)
    return demo.launch(**options)


demo = build()  # module level, as Hugging Face Spaces and `gradio app.py` expect

if __name__ == "__main__":
    # `make demo` / a Space: the first model of the picker (the default) is loaded before serving, so it is in
    # memory when the page opens and "Load model" answers at once.
    context.studio().store.get(context.studio().store.choices()[0])
    serve(demo)

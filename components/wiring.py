"""Every event of the app, one wiring function per tab (app.build() calls `wire`).

Heavy jobs go through `guarded`: a quick queued pre-check answers a second click or a missing step
with a toast, then the job runs with its progress on the step's status line. Light handlers (plans,
figures) are private: scripts use the named public endpoints listed in the API page.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr

from . import (api_endpoints, chat, compare_panel, compensation, context, export_panel, model_card, plan_events,
               prune_panel, score_panel, sources, tune_panel)
from .jobs import error_line, precheck
from .session import StudioSession

HEAVY = dict(concurrency_limit=None, trigger_mode="once")  # jobs.heavy() enforces the real limit
LIGHT = dict(show_progress="hidden", trigger_mode="always_last", api_visibility="private")


@dataclass
class Ui:
    """The components the events connect: the session state, the status strip, the tabs, and one
    namespace per panel (m: model, s: score, t: plan controls, v: plan view, p: prune, c: compare,
    e: export)."""
    session: gr.State
    status: gr.HTML
    tabs: gr.Tabs
    m: SimpleNamespace
    s: SimpleNamespace
    t: SimpleNamespace
    v: SimpleNamespace
    p: SimpleNamespace
    c: SimpleNamespace
    e: SimpleNamespace
    prune_tab: gr.Tab
    export_tab: gr.Tab

    @property
    def plan_inputs(self) -> list:
        t, v = self.t, self.v
        return [self.session, t.ratio, t.allocation, t.skip_first, t.skip_last, t.round_to, t.allow_empty, v.ratios,
                v.order, v.overlay]

    @property
    def plan_outputs(self) -> list:
        v = self.v
        return [v.readout, v.figure, v.plan_json, v.ratios, self.status, v.editor, self.t.allocation]  # PLAN_VIEWS

    @property
    def score_views(self) -> list:
        v = self.v
        return [v.shown, v.lipschitz, v.scores_info, v.scores_file, self.p.compensation, self.p.sequential]


def guarded(ui: Ui, button, fn, inputs, outputs, api_name, progress_on, needs=None, **extra):
    """A heavy job behind a quick pre-check (not busy, prerequisites there)."""
    pre = button.click(functools.partial(precheck, needs=needs), [ui.session], None, trigger_mode="multiple",
                       concurrency_limit=None, show_progress="hidden", api_visibility="private")
    job = pre.success(fn, inputs, outputs, api_name=api_name, show_progress_on=[progress_on], **HEAVY, **extra)
    job.failure(error_line, [ui.session], [progress_on], **LIGHT)  # the reason stays on the status line
    return job


def after_score(session):
    """The views that follow the active scores: run picker, attention-factor chart, details, file,
    and the compensation and sequential defaults."""
    return (tune_panel.scores_choices(session), score_panel.lipschitz_figure(session),
            score_panel.scores_info(session.active_scores), score_panel.save_scores(session),
            *compensation.defaults(session))


def reset_views(ui: Ui, session) -> dict:
    """Everything derived from the previous model, emptied (a new model was loaded)."""
    s, v, p, c, e = ui.s, ui.v, ui.p, ui.c, ui.e
    table, ppl_plot, zs_plot, speed_plot = compare_panel.results_view(session)
    return {v.shown: gr.update(choices=[], value=None), v.readout: tune_panel.readout_html(None),
            v.figure: tune_panel.figure_for(session, "sorted", True), v.lipschitz: score_panel.lipschitz_figure(session),
            v.plan_json: None, v.ratios: "", v.editor: None, v.scores_info: None, v.scores_file: None,
            v.plan_file: None, s.status: "", p.plan_info: prune_panel.plan_info(session), p.status: "", p.table: [],
            p.details: None, c.chat_original: [], c.chat_pruned: [], c.chat_info: "", c.status: "",
            c.table: table, c.ppl_plot: ppl_plot, c.zs_plot: zs_plot, c.speed_plot: speed_plot,
            e.info: export_panel.export_info(session), e.status: "", e.file: None, e.listing: []}


def wire_model(ui: Ui) -> None:
    """1 · Model: loading resets everything derived from the previous model."""
    m = ui.m
    m.next_step.click(lambda: gr.Tabs(selected="tune"), None, [ui.tabs], queue=False, api_visibility="private")
    reset = functools.partial(reset_views, ui)
    outputs = list(reset(StudioSession()))
    guarded(ui, m.load, model_card.load_model, [ui.session, m.spec], [m.card, ui.status, m.status], "load_model",
            m.status).success(reset, [ui.session], outputs, **LIGHT)


def wire_score(ui: Ui) -> None:
    """2 · Score: the new scores join the session's runs and become the active ones; the plan follows."""
    s, v = ui.s, ui.v
    s.own_text.use.click(sources.use_text, [ui.session, s.own_text.upload, s.own_text.pasted],
                         [s.own_text.info, s.source], api_name="calibration_text", show_progress="hidden")
    s.method.change(score_panel.option_visibility, [s.method], s.options, queue=False, show_progress="hidden",
                    api_visibility="private")
    guarded(ui, s.run, score_panel.run_score,
            [ui.session, s.method, s.source, s.samples, s.seq_len, s.unit, s.seed],
            [s.status, ui.status, v.scores_info, v.scores_file], "score", s.status, "model",
            inputs_kwargs=dict(zip(score_panel.option_names(), s.options))).success(
        after_score, [ui.session], ui.score_views, **LIGHT).success(
        plan_events.replan, ui.plan_inputs, ui.plan_outputs, **LIGHT)


def wire_tune(ui: Ui) -> None:
    """2 · Tune: every control recomputes the plan from the scores (no re-scoring)."""
    t, v = ui.t, ui.v
    # Sliders: `input` fires for drags, clicks and the keyboard (arrows, Home/End); `release` ends a drag.
    gr.on([t.allocation.input, t.skip_first.input, t.skip_first.release, t.skip_last.input, t.skip_last.release,
           t.round_to.input, t.allow_empty.input], plan_events.replan, ui.plan_inputs, ui.plan_outputs,
          api_name="make_plan", **{**LIGHT, "api_visibility": "public"})
    gr.on([t.ratio.input, t.ratio.release], plan_events.ratio_moved, ui.plan_inputs, ui.plan_outputs, **LIGHT)
    for button in t.presets:
        button.click(functools.partial(plan_events.apply_preset, button.value), None,
                     [t.ratio, t.allocation, t.skip_first, t.skip_last], queue=False, show_progress="hidden",
                     api_visibility="private").then(
            plan_events.replan, ui.plan_inputs, ui.plan_outputs, **LIGHT)
    v.apply_ratios.click(plan_events.apply_manual, ui.plan_inputs, ui.plan_outputs, **LIGHT)
    v.save_plan.click(tune_panel.save_plan, [ui.session], [v.plan_file], api_name="plan_file", show_progress="hidden")
    gr.on([v.order.input, v.overlay.input], tune_panel.figure_for, [ui.session, v.order, v.overlay], [v.figure],
          **LIGHT)
    v.shown.input(tune_panel.show_scores, [ui.session, v.shown, v.order, v.overlay], [v.figure], **LIGHT).success(
        after_score, [ui.session], ui.score_views, **LIGHT).success(
        plan_events.replan, ui.plan_inputs, ui.plan_outputs, **LIGHT)
    wire_layer_editor(ui)


def wire_layer_editor(ui: Ui) -> None:
    """2 · Tune: the per-layer sliders, re-rendered whenever the plan changes."""
    t, v = ui.t, ui.v

    with v.editor_box:
        @gr.render(inputs=[v.editor], triggers=[v.editor.change], show_progress="hidden")
        def layer_editor(spec):
            def wire_sliders(sliders):
                gr.on([sl.release for sl in sliders], plan_events.edit_layers,
                      [ui.session, t.round_to, t.allow_empty, v.order, v.overlay, *sliders], ui.plan_outputs,
                      **LIGHT)
            tune_panel.render_editor(spec, wire_sliders)


def wire_prune(ui: Ui) -> None:
    """3 · Prune."""
    p, e = ui.p, ui.e
    p.next_step.click(lambda: gr.Tabs(selected="compare"), None, [ui.tabs], queue=False, api_visibility="private")
    ui.prune_tab.select(prune_panel.plan_info, [ui.session], [p.plan_info], **LIGHT)
    guarded(ui, p.run, prune_panel.run_prune, [ui.session, p.compensation, p.sequential],
            [p.status, p.table, p.details, p.plan_info, ui.status], "prune", p.status, "plan").success(
        export_panel.export_info, [ui.session], [e.info], **LIGHT)


def wire_compare(ui: Ui) -> None:
    """4 · Compare: chat, perplexity, zero-shot, speed."""
    c = ui.c
    results = [c.status, c.table, c.ppl_plot, c.zs_plot, c.speed_plot]
    chat_inputs = [ui.session, c.prompt, c.max_new, c.temperature, c.gen_seed, c.chat_original, c.chat_pruned]
    chat_outputs = [c.chat_original, c.chat_pruned, c.prompt, c.chat_info]
    for trigger, api in ((c.send.click, dict(api_name="chat")), (c.prompt.submit, dict(api_visibility="private"))):
        trigger(chat.check_chat, [ui.session, c.prompt], None, trigger_mode="multiple", concurrency_limit=None,
                show_progress="hidden", api_visibility="private").success(
            chat.chat, chat_inputs, chat_outputs, concurrency_limit=None, show_progress="hidden", **api)
    c.clear.click(chat.clear_chat, None, [c.chat_original, c.chat_pruned, c.chat_info], queue=False,
                  api_visibility="private")
    for button, fn, inputs, name in ((c.ppl_run, compare_panel.run_perplexity, [c.ppl_source, c.ppl_windows],
                                      "perplexity"),
                                     (c.zs_run, compare_panel.run_zeroshot, [c.zs_tasks, c.zs_limit], "zeroshot"),
                                     (c.speed_run, compare_panel.run_speed, [c.speed_batches], "speed")):
        guarded(ui, button, fn, [ui.session, *inputs], results, name, c.status, "model")


def wire_export(ui: Ui) -> None:
    """5 · Export."""
    e = ui.e
    ui.export_tab.select(export_panel.export_info, [ui.session], [e.info], **LIGHT)
    guarded(ui, e.run, export_panel.run_export, [ui.session], [e.status, e.file, e.listing], "export", e.status,
            "pruned")


def wire_session_end(demo: gr.Blocks) -> None:
    """Session end: free this tab's scores, pruned model and files (the shared original stays)."""
    def release(request: gr.Request):
        context.studio().registry.release(getattr(request, "session_hash", None))

    demo.unload(release)


def wire(demo: gr.Blocks, ui: Ui) -> None:
    for wire_tab in (wire_model, wire_score, wire_tune, wire_prune, wire_compare, wire_export):
        wire_tab(ui)
    api_endpoints.wire()
    wire_session_end(demo)

"""Step 4: the original and the pruned model side by side: chat, quick perplexity, zero-shot, speed."""
from types import SimpleNamespace

import gradio as gr

from bip_core.formatting import format_params
from bip_core.offline_tasks import OFFLINE_TASKS
from bip_core.perplexity import perplexity
from bip_core.speed import measure_speed
from bip_core.zeroshot import OFFLINE_DEFAULT, zeroshot

from . import charts, chat, sources, texts
from .context import attach, studio
from .jobs import cancellable, heavy, require_model, ui_errors

RESULT_HEADERS = ["model", "measurement", "value", "details"]
RESULT_WIDTHS = ["24%", "26%", "10%", "40%"]  # the long 'details' wraps inside the table's width
ORIGINAL = "original"
NO_PRUNED = "*No pruned model yet: prune one in step 3 to compare.*"

def build():
    st = studio()
    talk = chat.build()
    with gr.Row(equal_height=False):
        with gr.Group(elem_classes=["bip-box"]):
            gr.Markdown("### Perplexity", elem_classes=["bip-box-title"])
            ppl_source = gr.Dropdown(sources.builtin_choices(), value="wiki-bb", label="Text",
                                     info="its test split (PTB: valid)")
            ppl_windows = gr.Slider(4, st.settings.max_windows, value=min(32, st.settings.max_windows), step=4,
                                    label="Windows of 128 tokens", info="more = slower, less noisy",
                                    elem_id="bip-ppl-windows")
            ppl_run = gr.Button("Quick perplexity", variant="primary", elem_id="bip-ppl-btn")
        with gr.Group(elem_classes=["bip-box"]):
            gr.Markdown("### Zero-shot (offline tasks)", elem_classes=["bip-box-title"])
            zs_tasks = gr.CheckboxGroup([(OFFLINE_TASKS[n].description.split(":")[0], n) for n in OFFLINE_TASKS],
                                        value=[n for n in OFFLINE_DEFAULT[:2] if n in OFFLINE_TASKS], label="Tasks")
            zs_limit = gr.Slider(10, 500, value=50, step=10, label="Questions per task")
            zs_run = gr.Button("Run zero-shot", variant="primary", elem_id="bip-zs-btn")
        with gr.Group(elem_classes=["bip-box"]):
            gr.Markdown("### Speed", elem_classes=["bip-box-title"])
            gr.Markdown("Prefill and decode throughput, measured now on this machine for both models.",
                        elem_classes=["bip-small"])
            speed_batches = gr.Radio(["1", "1 and 8"], value="1", label="Batch sizes")
            speed_run = gr.Button("Measure speed", variant="primary", elem_id="bip-speed-btn")
    status = gr.Markdown("", label="message", elem_classes=["bip-status"], min_height=56,
                         elem_id="bip-compare-status")
    table = gr.Dataframe(headers=RESULT_HEADERS, value=[], interactive=False, wrap=True, label="Results",
                         column_widths=RESULT_WIDTHS, elem_id="bip-results")
    with gr.Row():
        ppl_plot = gr.Plot(charts.perplexity_chart([]), label="perplexity chart", show_label=False)
        zs_plot = gr.Plot(charts.zeroshot_chart([]), label="zero-shot chart", show_label=False)
    speed_plot = gr.Plot(charts.speed_chart([]), label="speed chart", show_label=False)
    with gr.Accordion("How these are measured", open=False):
        gr.Markdown(texts.COMPARE, elem_classes=["bip-teach"])
    return SimpleNamespace(**vars(talk), ppl_source=ppl_source, ppl_windows=ppl_windows, ppl_run=ppl_run,
                           zs_tasks=zs_tasks, zs_limit=zs_limit, zs_run=zs_run, speed_batches=speed_batches,
                           speed_run=speed_run, status=status, table=table, ppl_plot=ppl_plot, zs_plot=zs_plot,
                           speed_plot=speed_plot)


# ------------------------------------------------------------------------------------- results

def _fmt_value(row) -> str:
    v = row["value"]
    if v is None:
        return "n/a"
    if row["kind"] == "zero-shot":
        return f"{v:.1%}"
    if row["metric"] in ("parameters", "MACs per token"):
        return format_params(v, digits=2)
    return f"{v:.4g}"


def table_rows(session) -> list[list]:
    return [[r["model"], r["metric"], _fmt_value(r), r.get("detail", "")] for r in session.results]


def results_view(session):
    """table, perplexity chart, zero-shot chart, speed chart."""
    rows = session.results if session is not None else []
    return (table_rows(session) if session is not None else [], charts.perplexity_chart(rows),
            charts.zeroshot_chart(rows), charts.speed_chart(rows))


def _models(session):
    loaded = require_model(session)
    models = [(ORIGINAL, loaded.model)]
    if session.pruned is not None:
        models.append((session.pruned_label or "pruned", session.pruned))
    return loaded, models


def _reporter(session, progress, what):
    def report(done, total, desc=None):
        progress(done / max(total, 1), desc=f"{what}: {done} of {total}")
    return cancellable(session, report)


# ------------------------------------------------------------------------------------- handlers

@ui_errors
def run_perplexity(session, source, windows, request: gr.Request, progress=gr.Progress()):
    """Perplexity of the original and the pruned model on `windows` windows of 128 tokens of `source`'s test
    split. Returns: message, results table, perplexity, zero-shot and speed charts."""
    attach(session, request)
    loaded, models = _models(session)
    windows = int(windows)
    rows = []
    with heavy(session, "Perplexity", progress, originals=[loaded.model]):
        for name, model in models:
            desc = f"Perplexity of the {name.split(':')[0]} model"
            compute = lambda m=model, d=desc: perplexity(m, loaded.tokenizer, source=source, windows=windows,  # noqa: E731
                                                         progress=_reporter(session, progress, d))
            r = studio().original_results.get(loaded.spec, ("ppl", source, windows), compute) if name == ORIGINAL else compute()
            rows.append({"model": name, "kind": "perplexity", "value": r["ppl"],
                         "metric": f"perplexity {r['dataset']} {r['split']} ({r['windows']} x {r['seq_len']})",
                         "detail": f"{r['dataset']} {r['split']}, {r['windows']} windows x {r['seq_len']} tokens, "
                                   f"{r['tokens']} scored tokens, {r['seconds']:.1f} s"})
    session.add_results(rows)
    msg = " · ".join(f"**{r['model']}**: PPL {r['value']:.2f}" for r in rows)
    if len(models) == 1:
        msg += " — " + NO_PRUNED
    return (msg, *results_view(session))


@ui_errors
def run_zeroshot(session, tasks, limit, request: gr.Request, progress=gr.Progress()):
    """Offline zero-shot accuracy of both models on `tasks`, `limit` questions each.
    Returns: message, results table, perplexity, zero-shot and speed charts."""
    attach(session, request)
    if not tasks:
        raise gr.Error("Pick at least one zero-shot task.", print_exception=False)
    loaded, models = _models(session)
    limit = int(limit)
    rows = []
    with heavy(session, "Zero-shot evaluation", progress, originals=[loaded.model]):
        for k, (name, model) in enumerate(models):
            session.check_open()
            progress(k / len(models), desc=f"Zero-shot: {name.split(':')[0]} model on {len(tasks)} task(s) ...")
            compute = lambda m=model: zeroshot(m, loaded.tokenizer, tasks=list(tasks), limit=limit)  # noqa: E731
            r = studio().original_results.get(loaded.spec, ("zs", tuple(sorted(tasks)), limit), compute) if name == ORIGINAL \
                else compute()
            for task, e in r["tasks"].items():
                rows.append({"model": name, "kind": "zero-shot", "metric": task.removeprefix("bb_"),
                             "value": e["value"], "chance": e.get("chance"),
                             "detail": f"{e['metric']}, {e.get('n')} questions"
                                       + (f", ± {e['stderr']:.1%}" if e.get("stderr") else "")
                                       + (f", chance {e['chance']:.1%}" if e.get("chance") is not None else "")})
    session.add_results(rows)
    return (f"Zero-shot done on {len(tasks)} task(s), {limit} questions each.", *results_view(session))


@ui_errors
def run_speed(session, batches, request: gr.Request, progress=gr.Progress()):
    """Prefill and decode throughput of both models, measured now (`batches`: "1" or "1 and 8"), plus their
    sizes. Returns: message, results table, perplexity, zero-shot and speed charts."""
    attach(session, request)
    loaded, models = _models(session)
    batch_sizes = (1, 8) if str(batches) == "1 and 8" else (1,)
    rows = []
    with heavy(session, "Speed measurement", progress, originals=[loaded.model]):
        for name, model in models:
            r = measure_speed(model, loaded.tokenizer, batch_sizes=batch_sizes, new_tokens=16, repeats=2,
                              progress=_reporter(session, progress, f"Speed of the {name.split(':')[0]} model"))
            rows += speed_rows(name, r)
    session.add_results(rows)
    return ("Speed measured (median of 2 runs, 128-token prompt, 16 new tokens).", *results_view(session))


def speed_rows(name: str, r: dict) -> list[dict]:
    """Rows from measure_speed: throughput per batch size (charted), and size (table only)."""
    threads = r.get("settings", {}).get("torch_threads")
    rows = []
    for t in r["throughput"]:
        b = t["batch_size"]
        for phase in ("prefill", "decode"):
            value = t.get(f"{phase}_tokens_per_s")
            rows.append({"model": name, "kind": "speed", "metric": f"{phase} tokens/s, batch {b}", "value": value,
                         "detail": f"median {t[f'{phase}_seconds']:.3f} s per run, {threads} threads"})
    rows.append({"model": name, "kind": "size", "metric": "parameters", "value": r["params"]["total"],
                 "detail": f"attention+MLP {r['params']['attention_mlp'] / 1e6:.1f}M"})
    rows.append({"model": name, "kind": "size", "metric": "MACs per token", "value": r["macs"]["per_token"],
                 "detail": f"at context {r.get('settings', {}).get('prompt_len')}"})
    rows.append({"model": name, "kind": "size", "metric": "weight memory (MiB)",
                 "value": r["memory"]["weight_bytes"] / 2**20,
                 "detail": f"KV cache {r['memory']['kv_cache_bytes_per_token'] / 1024:.1f} KiB per token"})
    return rows

"""Step 2a: score the loaded model with LLM-BIP or a baseline; keep every method's scores."""
from types import SimpleNamespace

import gradio as gr

from bip_core import scoring

from . import heatmaps, sources, status_bar, texts
from .context import attach, studio
from .jobs import cancellable, heavy, require_model, ui_errors

METHOD_LABELS = {"bip": "LLM-BIP", "flap": "FLAP", "wanda-sp": "Wanda-sp", "taylor": "Taylor (LLM-Pruner)",
                 "magnitude": "Magnitude", "random": "Random"}
OPTION_LABELS = {"aggregation": "Channel aggregation", "lipschitz": "Lipschitz factor", "norm": "Norm",
                 "weights": "Weights", "variant": "Variant"}
CHOICE_LABELS = {("lipschitz", "directional"): "measured gain of the MLP along the unit's change x mean||delta||",
                 ("lipschitz", "measured"): "bound: (1 + L) x mean||delta|| (ablation)",
                 ("lipschitz", "zero"): "direct: mean||delta||, L = 0 (ablation)",
                 ("aggregation", "mean_abs"): "mean |m| (exact output change)",
                 ("aggregation", "rms"): "RMS of m",
                 ("aggregation", "std"): "centred: std of m (the change left after bias compensation)"}
SHORT_LABELS = {("lipschitz", "zero"): "L = 0", ("lipschitz", "measured"): "(1 + L) bound",  # in run names
                ("lipschitz", "directional"): "directional gain"}
UNIT_CHOICES = [("auto (KV group for GQA, head for MHA)", "auto"), ("KV group", "kv_group"),
                ("query slot", "query_slot"), ("head (MHA only)", "head")]
SEQ_LENS = ["32", "64", "128", "256", "512"]  # strings: the API advertises choices as strings
DEFAULT_METHOD = "bip" if "bip" in scoring.METHODS else scoring.METHODS[0]


def method_choices() -> list[tuple[str, str]]:
    return [(METHOD_LABELS.get(m, m), m) for m in scoring.METHODS]


def option_specs() -> list[tuple[str, str, tuple, object]]:
    """(method, option, choices, default) for every option with a fixed set of values."""
    specs = []
    for method, metric in scoring.METRICS.items():
        for key, choices in getattr(metric, "CHOICES", {}).items():
            specs.append((method, key, tuple(choices), metric.DEFAULTS.get(key, choices[0])))
    return specs


def scores_label(meta: dict) -> str:
    """A short name for one scores run: method, non-default options, calibration."""
    method = meta.get("method", "?")
    parts = [METHOD_LABELS.get(method, method)]
    defaults = scoring.method_options(method) if method in scoring.METRICS else {}
    for key, value in (meta.get("options") or {}).items():
        if defaults.get(key) != value:
            parts.append(SHORT_LABELS.get((key, value), f"{key}={value}"))
    if meta.get("unit") and meta.get("unit") != "kv_group":
        parts.append(meta["unit"])
    if meta.get("samples"):
        source = "your text" if str(meta.get("source")).startswith("file:") else meta.get("source")
        parts.append(f"{source} {meta['samples']}x{meta['seq_len']}, seed {meta.get('seed')}")
    return " · ".join(parts)


def scores_info(scores) -> dict | None:
    """What the API and the 'details' box show about one scores run (shapes, cost, calibration); None
    before any scoring."""
    if scores is None:
        return None
    meta = scores.meta
    return {
        "label": scores_label(meta),
        "method": meta.get("method"), "unit": meta.get("unit"), "options": meta.get("options"),
        "layers": len(scores.layers),
        "attention_units_per_layer": [len(layer["attention"]) for layer in scores.layers],
        "mlp_channels_per_layer": [len(layer["mlp"]) for layer in scores.layers],
        "source": meta.get("source"), "samples": meta.get("samples"), "seq_len": meta.get("seq_len"),
        "seed": meta.get("seed"), "seconds": meta.get("seconds"),
        **memory_fields(meta),
    }


def memory_fields(meta: dict) -> dict:
    """The job's own memory (its peak above what the process held when it started) and, labelled as such,
    the whole server process's peak, which includes the weights and every other session's models."""
    peak, start = meta.get("peak_memory_bytes"), meta.get("memory_at_start_bytes")
    if not peak:
        return {}
    fields = {"process_peak_memory_mb": round(peak / 2**20, 1), "memory_kind": meta.get("peak_memory_kind")}
    if start is not None:
        fields["job_memory_mb"] = round(max(peak - start, 0) / 2**20, 1)
    return fields


def memory_note(meta: dict) -> str:
    fields = memory_fields(meta)
    if "job_memory_mb" in fields:
        return (f"job memory +{fields['job_memory_mb']:.0f} MiB (peak above the start; the server process peaked "
                f"at {fields['process_peak_memory_mb']:.0f} MiB, all sessions and weights included)")
    if fields:
        return f"server process peak {fields['process_peak_memory_mb']:.0f} MiB (all sessions and weights included)"
    return ""


def build():
    st = studio()
    with gr.Group(elem_classes=["bip-box"]):
        gr.Markdown("### Score", elem_classes=["bip-box-title"])
        method = gr.Dropdown(method_choices(), value=DEFAULT_METHOD, label="Method", elem_id="bip-method",
                             info="LLM-BIP first; the baselines use the same plans and surgery.")
        source = gr.Dropdown(sources.source_choices(), value="wiki-bb", label="Calibration text",
                             elem_id="bip-source")
        own_text = sources.build()
        with gr.Row():
            samples = gr.Slider(8, st.settings.max_samples, value=min(64, st.settings.max_samples), step=8,
                                label="Samples", info="windows of calibration text", scale=3,
                                elem_id="bip-samples")
            seq_len = gr.Dropdown(SEQ_LENS, value="128", label="Tokens each", min_width=100, scale=1,
                                  elem_id="bip-seq-len")
        with gr.Accordion("Options", open=False):
            options = []
            for m, key, choices, default in option_specs():
                options.append(gr.Radio([(CHOICE_LABELS.get((key, c), c), c) for c in choices], value=default,
                                        label=f"{OPTION_LABELS.get(key, key)} ({METHOD_LABELS.get(m, m)})",
                                        visible=(m == DEFAULT_METHOD)))
            unit = gr.Dropdown(UNIT_CHOICES, value="auto", label="Attention unit")
            seed = gr.Number(0, precision=0, label="Seed", minimum=0)
        run = gr.Button("Score", variant="primary", elem_id="bip-score-btn")
        status = gr.Markdown("", label="message", elem_classes=["bip-status"], min_height=56,
                             elem_id="bip-score-status")
    with gr.Accordion("What do the scores mean?", open=False):
        gr.Markdown(texts.SCORE + "\n\n" + texts.LIPSCHITZ + "\n\n" + texts.METHODS + "\n\n" + texts.CALIBRATION,
                    elem_classes=["bip-teach"])
    return SimpleNamespace(method=method, source=source, samples=samples, seq_len=seq_len, options=options,
                           unit=unit, seed=seed, run=run, status=status, own_text=own_text)


def option_visibility(method):
    """Show only the selected method's options."""
    return [gr.update(visible=(m == method)) for m, *_ in option_specs()]


def option_names() -> list[str]:
    """The API parameter name of each option_specs() entry: the option's own name (unique across methods)."""
    names = [key for _, key, _, _ in option_specs()]
    if len(set(names)) != len(names):
        raise RuntimeError(f"Two scoring methods share an option name ({names}); name the API parameters apart.")
    return names


def _options_for(method: str, options: dict) -> dict:
    return {key: options[key] for m, key, _, _ in option_specs() if m == method and key in options}


@ui_errors
def run_score(session, method, source, samples, seq_len, unit, seed, request: gr.Request, progress=gr.Progress(),
              **options):
    """Score the loaded model: every attention unit and MLP channel, on `samples` windows of `seq_len` tokens of
    calibration text `source` ('custom' = the text given with /calibration_text). The run joins the session's runs
    and becomes the active one. Method options (aggregation, lipschitz, variant, norm, weights) apply to their
    method only. Returns: message, pipeline, scores summary, scores file (JSON)."""
    attach(session, request)
    loaded = require_model(session)
    source = sources.resolve(session, source)
    options = _options_for(method, options)
    unit = None if unit in (None, "", "auto") else unit
    label_desc = METHOD_LABELS.get(method, method)

    def report(done, total, desc=None):
        progress(done / max(total, 1), desc=f"Scoring with {label_desc}: step {done} of {total}")

    with heavy(session, "Scoring", progress, originals=[loaded.model]):
        progress(0, desc=f"Scoring with {label_desc}: preparing calibration text ...")
        scores = scoring.score(loaded.model, loaded.tokenizer, method=method, source=source, samples=int(samples),
                               seq_len=int(seq_len), seed=int(seed or 0), unit=unit, progress=cancellable(session, report),
                               model_name=loaded.spec, **options)
    label = scores_label(scores.meta)
    dropped = session.add_scores(label, scores)
    meta = scores.meta
    took = f"{meta.get('seconds', 0):.1f} s"
    if memory_note(meta):
        took += ", " + memory_note(meta)
    msg = f"**{label}** scored in {took}. Kept for comparison: {len(session.scores)} run(s)."
    if dropped:
        msg += f" Dropped the oldest to keep at most {len(session.scores)}: {', '.join(dropped)}."
    return msg, status_bar.render(session), scores_info(scores), save_scores(session)


def save_scores(session):
    """The active scores as a JSON file in the session's folder (for the download button)."""
    scores = session.active_scores
    if scores is None:
        return None
    path = session.tmp_dir() / f"scores-{scores.meta.get('method', 'x')}.json"
    scores.save(path)
    return str(path)


def lipschitz_figure(session):
    scores = session.active_scores
    if scores is None:
        return heatmaps.empty_figure("No scores yet.", height=240)
    method = scores.meta.get("method")
    return heatmaps.lipschitz_chart(scores, METHOD_LABELS.get(method, method))

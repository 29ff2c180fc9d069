"""The app's pieces without a server: settings, the shared model store's policy (allow-list, size
cap), sessions and their cleanup, the job guard, and the figure builders."""
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from bip_core.errors import ModelSpecError
from bip_core.loading import LoadedModel, random_model
from bip_core.tiny_configs import tiny_config
from components import chat, heatmaps, jobs, score_panel, status_bar, tune_panel, wiring
from components.model_store import ModelStore
from components.session import SessionClosed, SessionRegistry, StudioSession
from components.settings import Settings, from_env, parse_count


def settings(**kw) -> Settings:
    base = dict(allowed_models=None, max_params=None, concurrency=1, session_ttl=60, max_samples=256,
                max_windows=512, host="127.0.0.1", port=7860)
    return Settings(**{**base, **kw})


def fake_scores(layers=4, units=3, channels=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"layers": [{"attention": (rng.random(units) * 10).tolist(), "mlp": rng.lognormal(0, 1, channels).tolist(),
                        "lipschitz": float(rng.random())} for _ in range(layers)],
            "meta": {"method": "bip", "unit": "kv_group"}}


def test_parse_count_and_env(monkeypatch):
    assert parse_count("500M") == 500_000_000 and parse_count("2B") == 2_000_000_000
    assert parse_count("1.5e9") == 1_500_000_000 and parse_count("") is None and parse_count(None) is None
    with pytest.raises(ValueError, match="500M"):
        parse_count("lots")
    monkeypatch.setenv("BIP_ALLOWED_MODELS", "default, /models/a")
    monkeypatch.setenv("BIP_MAX_PARAMS", "200M")
    monkeypatch.setenv("BIP_CONCURRENCY", "2")
    s = from_env()
    assert s.allowed_models == ("default", "/models/a") and s.public
    assert s.max_params == 200_000_000 and s.concurrency == 2


def test_allow_list_refuses_other_models():
    store = ModelStore(settings(allowed_models=("default",)), loader=lambda spec: pytest.fail("must not load"))
    assert store.choices() == ["default"]
    with pytest.raises(ModelSpecError, match="not available on this server.*default"):
        store.get("/some/other/folder")
    with pytest.raises(ModelSpecError, match="No model given"):
        store.get("  ")


def test_size_cap_before_and_after_loading(tmp_path):
    config = tiny_config("llama")
    config.save_pretrained(tmp_path)  # config only: sized on the meta device, never loaded
    store = ModelStore(settings(max_params=1000), loader=lambda spec: pytest.fail("must not load"))
    with pytest.raises(ModelSpecError, match="BIP_MAX_PARAMS"):
        store.get(str(tmp_path))

    def loader(spec):
        return LoadedModel(random_model(config), None, spec, None, "llama")

    capped = ModelStore(settings(max_params=1000), loader=loader)
    with pytest.raises(ModelSpecError, match="accepts models up to"):
        capped.get("some-spec")
    assert capped.loaded_specs() == []
    roomy = ModelStore(settings(), loader=loader)
    first = roomy.get("a")
    assert roomy.get("a") is first  # loaded once, shared
    roomy.get("b"), roomy.get("c")
    assert roomy.loaded_specs() == ["b", "c"]  # keeps the two most recent


def test_session_files_are_removed_when_the_app_stops():
    """A session still open when the process exits leaves no folder behind (its exports are large)."""
    import subprocess
    import sys

    code = ("from components.session import StudioSession; s = StudioSession(); f = s.tmp_dir(); "
            "(f / 'export.zip').write_bytes(b'x' * 1000); print(f)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    folder = Path(run.stdout.strip())
    assert folder.name.startswith("bip-session-") and not folder.exists()
    session = StudioSession()
    kept = session.tmp_dir()
    session.free()
    assert not kept.exists()


def test_sessions_are_freed_on_release_and_when_idle():
    registry = SessionRegistry(ttl_seconds=60)
    a, b = StudioSession(), StudioSession()
    a.scores["x"] = object()
    a.pruned = object()
    registry.attach(a, "hash-a")
    registry.attach(b, "hash-b")
    folder = a.tmp_dir()
    assert folder.exists() and len(registry) == 2
    registry.release("hash-a")
    assert a.pruned is None and not a.scores and not folder.exists() and len(registry) == 1
    assert registry.sweep(now=time.time() + 30) == 0
    b.begin("Scoring")
    assert registry.sweep(now=time.time() + 120) == 0  # a running job is never freed
    b.end()
    assert registry.sweep(now=time.time() + 120) == 1 and len(registry) == 0


def test_one_job_per_session():
    jobs.configure(1)
    session = StudioSession()
    with jobs.heavy(session, "Scoring"):
        with pytest.raises(gr.Error, match="Scoring is still running"):
            jobs.check_idle(session)
        with pytest.raises(gr.Error, match="Scoring is still running"):
            with jobs.heavy(session, "Pruning"):
                pass
    assert session.busy is None
    jobs.check_idle(session)


def _job_in_thread(session, what, outcome, started, steps=2000):
    """A heavy job reporting progress every 10 ms (like scoring, once per layer of each batch)."""
    def run():
        try:
            with jobs.heavy(session, what):
                report = jobs.cancellable(session, lambda *args: None)
                started.set()
                for i in range(steps):
                    time.sleep(0.01)
                    report(i, steps)
            outcome["done"] = True
        except Exception as err:  # noqa: BLE001 -- the test inspects it
            outcome["error"] = err
        started.set()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_closing_a_tab_cancels_its_job_and_frees_its_slot():
    jobs.configure(1)
    registry = SessionRegistry(ttl_seconds=60)
    closed_tab, new_tab = StudioSession(), StudioSession()
    closed_tab.scores["x"] = object()
    registry.attach(closed_tab, "closed")
    outcome, started = {}, threading.Event()
    thread = _job_in_thread(closed_tab, "Scoring", outcome, started)
    started.wait(10)
    registry.release("closed")  # the tab closed (demo.unload)
    t0 = time.perf_counter()
    with jobs.heavy(new_tab, "Loading a model"):
        waited = time.perf_counter() - t0
    thread.join(10)
    assert waited < 2, "the new tab waited behind the abandoned job"
    assert isinstance(outcome.get("error"), SessionClosed) and "tab was closed" in str(outcome["error"])
    assert closed_tab.busy is None and closed_tab.expired and not closed_tab.scores  # freed when the job ended
    assert "cancelled" in jobs.friendly(outcome["error"]).message


def test_a_closed_tab_stops_waiting_for_a_slot():
    jobs.configure(1)
    running, waiting = StudioSession(), StudioSession()
    outcome, started = {}, threading.Event()
    with jobs.heavy(running, "Scoring"):
        thread = _job_in_thread(waiting, "Perplexity", outcome, started, steps=1)
        time.sleep(0.3)
        assert waiting.busy == "Perplexity" and "error" not in outcome  # queued behind the running job
        waiting.close()
        thread.join(5)
    assert isinstance(outcome.get("error"), SessionClosed) and waiting.busy is None


def test_errors_become_readable_messages():
    assert "Ratio must be" in jobs.friendly(ModelSpecError("Ratio must be ...")).message
    assert "Invalid input" in jobs.friendly(ValueError("bad")).message
    unexpected = jobs.friendly(KeyError("x"))
    assert "still running" in unexpected.message and "Traceback" not in unexpected.message

    @jobs.ui_errors
    def boom():
        raise ModelSpecError("No such model")

    with pytest.raises(gr.Error, match="No such model"):
        boom()


def test_scores_figure_shapes_and_overlay():
    d = fake_scores(layers=4, units=3, channels=64)
    plan = [{"attention": [0, 2], "mlp": list(range(40))} for _ in range(4)]
    removed = heatmaps.removed_sets(plan, d)
    assert removed[0] == ({1}, set(range(40, 64)))
    fig = heatmaps.scores_figure(d, removed, bins=16)
    att, mlp, overlay, bars_att, bars_mlp = fig.data
    assert np.asarray(att.z).shape == (4, 3) and att.text[0][1] == "✕" and att.text[0][0] == ""
    assert np.asarray(mlp.z).shape == (4, 16)
    assert bars_att.x[0] == pytest.approx(1 / 3) and bars_mlp.x[0] == pytest.approx(24 / 64)
    fig = heatmaps.scores_figure(d, None, order="index", bins=16)
    assert len(fig.data) == 2  # no overlay, no bars
    assert "No scores" in heatmaps.scores_figure(None).layout.annotations[0].text


def test_mlp_bins_sorted_and_by_index():
    mlp = np.array([5.0, 1.0, 3.0, 100.0, 2.0, 4.0, 0.5, 6.0])
    vals, fracs, custom = heatmaps.mlp_bins(mlp, {1, 6}, bins=4, order="sorted", floor=0.1)
    assert list(vals) == sorted(vals, reverse=True)  # most important first
    assert list(fracs) == [0, 0, 0, 1.0]  # the two least important channels sit in the last bin
    vals, fracs, custom = heatmaps.mlp_bins(mlp, set(), bins=4, order="index", floor=0.1)
    assert custom[1][2] == 3 and custom[1][3] == 100.0  # the outlier channel is named in its bin


def test_lipschitz_chart_explains_missing_values():
    d = fake_scores()
    assert len(heatmaps.lipschitz_chart(d).data) == 1
    assert "(used: scores are (1 + L)" in heatmaps.lipschitz_chart(d).layout.title.text
    for layer in d["layers"]:  # the direct score (L = 0): the bound is shown, not used
        layer["lipschitz_estimate"], layer["lipschitz"] = layer["lipschitz"], 0.0
    chart = heatmaps.lipschitz_chart(d)
    assert list(chart.data[0].y) == [1 + layer["lipschitz_estimate"] for layer in d["layers"]]
    assert "not used" in chart.layout.title.text and len(chart.data) == 1
    for layer in d["layers"]:  # the default: one measured gain per unit, drawn as dots
        layer["unit_gain"] = [1.0 + 0.1 * u for u in range(len(layer["attention"]))]
    chart = heatmaps.lipschitz_chart(d)
    assert len(chart.data) == 2 and len(chart.data[1].y) == sum(len(layer["attention"]) for layer in d["layers"])
    assert "dots, used" in chart.layout.title.text
    for layer in d["layers"]:
        layer.pop("lipschitz")
        layer.pop("lipschitz_estimate")
    d["meta"]["method"] = "flap"
    assert "FLAP has no Lipschitz factor" in heatmaps.lipschitz_chart(d, "FLAP").layout.annotations[0].text


def test_attention_factor_chart_axes():
    """A log axis with plotly's own ticks showed a lone '2' for 20; the layer axis ran to 30 for layers 0-29."""
    d = fake_scores(layers=30)
    for i, layer in enumerate(d["layers"]):
        layer["lipschitz"] = 0.5 + (36 if i == 0 else i % 3)
        layer["unit_gain"] = [1.0, 8.0 if i == 0 else 1.2]
    chart = heatmaps.lipschitz_chart(d)
    assert list(chart.layout.yaxis.ticktext) == ["1", "2", "5", "10", "20", "50"]
    assert chart.layout.xaxis.range[0] < 0 and 29 < chart.layout.xaxis.range[1] < 30


def test_readout_and_status_strip():
    summary = {"removed_attention_mlp": 0.2, "removed_total": 0.158, "params_after": 113_277_888,
               "params_before": 134_515_008, "allocation": "uniform", "ratio_requested": 0.2, "scores_label": "LLM-BIP",
               "layers": [{"attention_kept": 2, "attention_total": 3, "mlp_kept": 1297, "mlp_total": 1536}] * 30}
    html = tune_panel.readout_html(summary)
    assert "20.0%" in html and "15.8%" in html and "113.3M" in html and "134.5M" in html
    assert "Score the model" in tune_panel.readout_html(None)
    assert "Model" in status_bar.render(StudioSession())
    with pytest.raises(gr.Error, match="JSON list of 30"):
        tune_panel.parse_ratios("[[0.1, 0.2]]", 30)
    assert tune_panel.parse_ratios("[[0.1, 0.2], [0, 0]]", 2) == [(0.1, 0.2), (0.0, 0.0)]


def test_views_of_a_session_without_scores():
    """Focusing the empty 'Scores shown' dropdown before scoring ran these on an empty session (an
    AttributeError in scores_info used to end in a server-side traceback)."""
    session = StudioSession()
    figure = tune_panel.show_scores(session, None, "sorted", True)
    assert "No scores" in figure.layout.annotations[0].text
    choices, chart, info, scores_file, comp, sequential = wiring.after_score(session)
    assert info is None and scores_file is None and "No scores" in chart.layout.annotations[0].text


def test_chat_history_is_trimmed_to_the_context(tokenizer):
    from bip_core.generation import build_prompt_ids

    long = "pruning " * 5000  # two such prompts: about 10k tokens, as in the issue
    history = [{"role": "user", "content": long}, {"role": "assistant", "content": "Noted."}] * 2
    history.append({"role": "user", "content": "What is the capital of France?"})
    sent, dropped = chat.fit_context(tokenizer, history, 8192, 64)
    assert dropped == 1 and sent == history[2:]
    assert build_prompt_ids(tokenizer, sent)[0].shape[1] <= 8192 - 64 < build_prompt_ids(tokenizer, history)[0].shape[1]
    assert chat.fit_context(tokenizer, history[-1:], 8192, 64) == (history[-1:], 0)
    with pytest.raises(gr.Error, match="Shorten the prompt"):
        chat.fit_context(tokenizer, [{"role": "user", "content": long}], 2048, 64)


def test_memory_is_the_jobs_own_or_labelled_as_the_process():
    """The server process's peak includes other sessions' models (it grew from 1641 to 4786 MiB for similar
    jobs); the job's own is its peak above the start."""
    meta = {"peak_memory_bytes": 4786 * 2**20, "memory_at_start_bytes": 4500 * 2**20,
            "peak_memory_kind": "peak resident set of the process"}
    fields = score_panel.memory_fields(meta)
    assert fields["job_memory_mb"] == 286 and fields["process_peak_memory_mb"] == 4786
    note = score_panel.memory_note(meta)
    assert note.startswith("job memory +286 MiB") and "all sessions" in note
    assert "all sessions" in score_panel.memory_note({"peak_memory_bytes": 2**30})
    assert score_panel.memory_note({}) == ""


def test_original_results_are_bounded_and_go_with_their_model():
    from components.original_results import OriginalResults

    results = OriginalResults(keep=3)
    store = ModelStore(settings(), keep=1, loader=lambda spec: LoadedModel(random_model(tiny_config("llama")), None,
                                                                          spec, None, "llama"))
    store.on_evict(results.drop)
    calls = []
    store.get("a")
    assert results.get("a", ("ppl", 4), lambda: calls.append(1) or 26.5) == 26.5
    assert results.get("a", ("ppl", 4), lambda: calls.append(1) or 0.0) == 26.5 and len(calls) == 1  # once
    store.get("b")  # the store keeps one model: "a" is evicted, and its measurements with it
    assert len(results) == 0
    assert results.get("a", ("ppl", 4), lambda: 27.0) == 27.0
    for k in range(5):
        results.get("b", ("zs", k), lambda: k)
    assert len(results) == 3


def test_session_caches_are_bounded():
    from components.session import MAX_RESULT_ROWS, MAX_SCORE_RUNS

    session = StudioSession()
    for k in range(MAX_SCORE_RUNS + 2):
        dropped = session.add_scores(f"run {k}", object())
    assert dropped == ["run 1"] and len(session.scores) == MAX_SCORE_RUNS and session.active == f"run {k}"
    assert "run 0" not in session.scores
    for k in range(MAX_RESULT_ROWS + 5):
        session.add_results([{"model": f"pruned #{k}", "metric": "ppl", "value": k}])
    session.add_results([{"model": f"pruned #{k}", "metric": "ppl", "value": -1}])  # a re-run replaces its row
    assert len(session.results) == MAX_RESULT_ROWS and session.results[-1]["value"] == -1


def test_a_streaming_job_may_resume_on_another_thread():
    """Gradio resumes a generator (the chat) on any worker thread: the job's locks must still be released
    (a thread-owned lock raised 'cannot release un-acquired lock' at the end of a chat)."""
    class Model:  # a weak-referenceable stand-in for a shared original
        pass

    jobs.configure(1)
    session, model, errors, acquired = StudioSession(), Model(), [], []

    def stream():
        with jobs.heavy(session, "Generation", originals=[model]):
            yield 1
            yield 2

    generator = stream()
    next(generator)  # started on this thread ...
    resume = threading.Thread(target=lambda: errors.extend([] if list(generator) == [2] else ["lost"]))
    resume.start()  # ... finished on another one
    resume.join(5)
    other = threading.Thread(target=lambda: acquired.append(jobs.model_lock(model).acquire(timeout=2)))
    other.start()
    other.join(5)
    assert errors == [] and acquired == [True] and session.busy is None

"""Sweep: one scoring per method, every ratio evaluated, CSV table and HTML chart written."""
import json

import pandas as pd
import pytest

from bip_core.cli import main
from bip_core.errors import BipError, PlanError
from bip_core.loading import random_model
from bip_core.perplexity import perplexity
from bip_core.sweep import COLUMNS, parse_method, sweep
from bip_core.tiny_configs import tiny_config


@pytest.fixture
def text_source(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(f"Paragraph {i} talks about rivers, towns and {i * 7} bridges." * 3 for i in range(30)))
    return f"file:{path}"


def test_parse_method():
    assert parse_method("bip") == ("bip", {})
    assert parse_method("bip:aggregation=rms:lipschitz=zero") == ("bip", {"aggregation": "rms", "lipschitz": "zero"})
    with pytest.raises(BipError, match="KEY=VALUE"):
        parse_method("bip:rms")


def test_sweep_scores_once_per_method_and_writes_table_and_chart(tokenizer, text_source, tmp_path, monkeypatch):
    import bip_core.scoring as scoring

    calls = []
    real_score = scoring.score

    def counting_score(*args, **kwargs):
        calls.append(kwargs["method"])
        return real_score(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", counting_score)
    model = random_model(tiny_config("llama"), seed=0)
    out = tmp_path / "sweep" / "results.csv"
    table = sweep(model, tokenizer, methods=["magnitude", "bip:lipschitz=zero"], ratios=[0.25, 0.5],
                  allocations=["uniform", "global"], data=text_source, samples=4, seq_len=16,
                  ppl_source=text_source, ppl_split="test", windows=3, ppl_seq_len=32, out=out,
                  compensation="none", sequential=False)  # refit and sequential rows score once more per plan
    assert calls == ["magnitude", "bip"]  # scored once per method
    assert len(table) == 1 + 2 * 2 * 2
    saved = pd.read_csv(out)
    assert list(saved.columns) == COLUMNS
    assert {"method", "allocation", "ratio", "ppl", "params", "score_seconds"} <= set(saved.columns)
    dense = saved[saved["method"] == "dense"].iloc[0]
    assert dense["ratio"] == 0 and dense["params"] == sum(p.numel() for p in model.parameters())
    expected = perplexity(model, tokenizer, text_source, "test", seq_len=32, windows=3)
    assert dense["ppl"] == pytest.approx(expected["ppl"], rel=1e-6)
    pruned = saved[saved["method"] != "dense"]
    assert set(pruned["method"]) == {"magnitude", "bip:lipschitz=zero"}
    assert pruned["ppl"].notna().all() and (pruned["ppl"] > 1).all()
    assert (pruned["params"] < dense["params"]).all()
    assert pruned["removed_attention_mlp"].tolist() == pytest.approx(pruned["ratio"].tolist(), abs=0.03)
    assert (pruned["score_seconds"] >= 0).all() and pruned["error"].isna().all()
    assert (saved[["dataset", "split", "seq_len", "windows"]].drop_duplicates().values.tolist()
            == [[text_source, "test", 32, 3]])
    assert (saved["tokens"] == 3 * 31).all()
    half = pruned[pruned["ratio"] == 0.5]
    assert (half["params"] < pruned[pruned["ratio"] == 0.25]["params"].max()).all()
    html = out.with_suffix(".html").read_text()
    assert "plotly" in html.lower() and '"type":"log"' in html.replace(" ", "")
    assert "magnitude" in html and "bip:lipschitz=zero" in html and "perplexity" in html


def test_sweep_records_infeasible_plans_and_refuses_manual(tokenizer, text_source, tmp_path):
    model = random_model(tiny_config("qwen2", gqa=False), seed=0)
    table = sweep(model, tokenizer, methods=["random"], ratios=[0.3, 1.0], allocations=["uniform"],
                  ppl_source=text_source, ppl_split="test", windows=2, ppl_seq_len=16, dense=False,
                  out=tmp_path / "r.csv")
    assert len(table) == 2
    ok, bad = table.iloc[0], table.iloc[1]
    assert ok["ppl"] > 1 and pd.isna(ok["error"])
    assert pd.isna(bad["ppl"]) and isinstance(bad["error"], str) and bad["error"]
    with pytest.raises(PlanError, match="manual"):
        sweep(model, tokenizer, methods=["random"], ratios=[0.3], allocations=["manual"])


def test_sweep_adds_extra_metrics_of_every_evaluated_model(tokenizer, text_source, tmp_path):
    from bip_core.architecture import count_params

    model = random_model(tiny_config("mistral"), seed=0)
    seen = []

    def extra(m):
        seen.append(m)
        return {"attention_mlp_seen": count_params(m)["attention_mlp"]}

    out = tmp_path / "x.csv"
    table = sweep(model, tokenizer, methods=["random"], ratios=[0.25, 0.5], data=text_source, samples=2, seq_len=16,
                  ppl_source=text_source, ppl_split="test", windows=2, ppl_seq_len=16, out=out, extra_metrics=extra)
    assert seen[0] is model and len(seen) == 3  # dense first, then each pruned model
    assert table["attention_mlp_seen"].tolist() == table["params_attention_mlp"].tolist()
    assert list(pd.read_csv(out).columns) == COLUMNS + ["attention_mlp_seen"]


@pytest.mark.slow
def test_sweep_cli_on_a_config_only_model(tmp_path, text_source, capsys):
    folder = tmp_path / "tiny"
    tiny_config("mistral").save_pretrained(folder)
    out = tmp_path / "cli" / "results.csv"
    code = main(["sweep", "--model", str(folder), "--methods", "random,wanda-sp", "--ratios", "0.2,0.4",
                 "--allocations", "uniform", "--data", text_source, "--samples", "4", "--seq-len", "16",
                 "--ppl", text_source, "--split", "test", "--ppl-seq-len", "16", "--windows", "2", "--quiet",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 1 + 2 * 2 and report["csv"] == str(out)
    saved = pd.read_csv(out)
    assert saved["ppl"].notna().all() and set(saved["method"]) == {"dense", "random", "wanda-sp"}
    assert out.with_suffix(".html").is_file()


@pytest.mark.parametrize("compensation,sequential", [("refit", False), ("bias", True)])
def test_sweep_refits_or_prunes_sequentially_like_calibrate_and_compress(tokenizer, text_source, compensation,
                                                                         sequential):
    """compensation='refit' and sequential=True rows are the model that calibrate_and_compress + prune_model give
    for the same plan, and they differ from the plain bias-compensated row."""
    from bip_core.plan import make_plan
    from bip_core.scoring import score
    from bip_core.sequential import calibrate_and_compress
    from bip_core.surgery import prune_model

    model = random_model(tiny_config("llama"), seed=0)
    calibration = {"source": text_source, "samples": 4, "seq_len": 16, "seed": 0}
    evaluation = {"ppl_source": text_source, "ppl_split": "test", "windows": 3, "ppl_seq_len": 32}
    common = dict(methods=["bip"], ratios=[0.4], allocations=["uniform"], data=text_source, samples=4, seq_len=16,
                  dense=False, **evaluation)
    table = sweep(model, tokenizer, compensation=compensation, sequential=sequential, **common)
    plain = sweep(model, tokenizer, compensation="bias", sequential=False, **common)
    row = table.iloc[0]
    assert (row["compensation"], bool(row["sequential"])) == (compensation, sequential)
    if compensation == "refit":
        assert row["refit_alpha"] == pytest.approx(1e-3)
    else:
        assert pd.isna(row["refit_alpha"])

    scores = score(model, tokenizer, "bip", **calibration)
    plan = make_plan(scores, model, 0.4, allocation="uniform")
    done = calibrate_and_compress(model, tokenizer, plan, sequential=sequential, compensation=compensation,
                                  method="bip", **calibration)
    pruned = prune_model(model, done.plan, bias_compensation=compensation == "bias", scores=done.scores,
                         refit=done.refit)
    expected = perplexity(pruned, tokenizer, text_source, "test", seq_len=32, windows=3)["ppl"]
    assert row["ppl"] == pytest.approx(expected, rel=1e-5)
    assert row["ppl"] != pytest.approx(plain.iloc[0]["ppl"], rel=1e-4)


def test_sweep_refuses_an_unknown_compensation(tokenizer, text_source):
    model = random_model(tiny_config("llama"), seed=0)
    with pytest.raises(BipError, match="compensation must be"):
        sweep(model, tokenizer, methods=["bip"], ratios=[0.4], data=text_source, samples=4, seq_len=16,
              compensation="mean", dense=False, ppl_source=text_source, ppl_split="test", windows=2)


def test_auto_is_each_methods_practice(tokenizer, text_source):
    """'auto' compensation and sequential: LLM-BIP refit layer by layer (chosen on valid), FLAP bias in one pass,
    Wanda-sp layer by layer without compensation, magnitude neither; an uncentred LLM-BIP score no compensation."""
    from bip_core.scoring import score
    from bip_core.sweep import resolve_compensation, resolve_sequential

    model = random_model(tiny_config("llama"), seed=0)
    calibration = {"source": text_source, "samples": 2, "seq_len": 16}
    expected = {"bip": ("refit", True), "flap": ("bias", False), "wanda-sp": ("none", True),
                "magnitude": ("none", False)}
    for method, practice in expected.items():
        scores = score(model, tokenizer, method, **calibration)
        assert (resolve_compensation("auto", scores), resolve_sequential("auto", scores)) == practice, method
        assert (resolve_compensation("off", scores), resolve_sequential(False, scores)) == ("none", False)
    uncentred = score(model, tokenizer, "bip", aggregation="mean_abs", **calibration)
    assert resolve_compensation("auto", uncentred) == "none"

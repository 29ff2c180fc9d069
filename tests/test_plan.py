"""Plans: ratios, allocations, constraints, GQA layouts, errors, persistence and the `plan` CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bip_core.architecture import count_params, model_geometry
from bip_core.cli import main as cli_main
from bip_core.errors import BipError, PlanError
from bip_core.loading import random_model
from bip_core.plan import ALLOCATIONS, Plan, make_plan
from bip_core.tiny_configs import tiny_config
from fake_scores import fake_scores, permutation_scores, tiny_folder_with_scores

RATIOS = (0.0, 0.1, 0.25, 0.5, 0.7)


def units_for(model):
    n_rep = model_geometry(model)[0].n_rep
    return ("head",) if n_rep == 1 else ("kv_group", "query_slot")


def tolerance(plan: Plan) -> float:
    """One unit's rounding: half of the largest unit or channel, per layer that rounds on its own."""
    costs = plan.costs()
    if plan.meta["allocation"] == "uniform":  # each layer's MLP absorbs its own rounding to half a channel
        return float(costs.channel_cost.sum()) / 2 / costs.layer_params.sum() + 1e-12
    return float(max(costs.unit_cost.max(), costs.channel_cost.max())) / 2 / costs.layer_params.sum() + 1e-12


# ---- ratios -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("allocation", ("uniform", "global", "global-energy", "global-std"))
def test_plans_hit_the_ratio_within_one_units_rounding(default_loaded, allocation):
    model = default_loaded.model
    for unit in units_for(model):
        scores = fake_scores(model, unit=unit)
        for ratio in RATIOS:
            plan = make_plan(scores, model, ratio, allocation)
            summary = plan.summary(model)
            assert abs(summary["removed_attention_mlp"] - ratio) <= tolerance(plan), (unit, ratio, summary)
            params = count_params(model)
            assert summary["params_before"] == params["total"]
            assert summary["attention_mlp_before"] == params["attention_mlp"]
            removed = summary["params_before"] - summary["params_after"]
            assert summary["removed_total"] == pytest.approx(removed / params["total"])
            assert summary["removed_attention_mlp"] == pytest.approx(removed / params["attention_mlp"])


def test_global_energy_ranks_squared_block_changes_per_parameter(tiny_model):
    """One attention unit of score a vs n channels of score c: norms would charge the channels n*c,
    energies n*c^2 (what their uncorrelated changes add up to)."""
    import copy

    scores = fake_scores(tiny_model, unit="kv_group")
    plan_energy = make_plan(scores, tiny_model, 0.3, "global-energy")
    costs = plan_energy.costs()
    # squaring the scores turns "global-energy" into "global" on the squared scores
    squared = copy.deepcopy(scores.to_dict())
    for layer in squared["layers"]:
        scale = layer.get("output_scale") or 1.0
        layer["attention"] = [(a / scale) ** 2 for a in layer["attention"]]
        layer["mlp"] = [(c / scale) ** 2 for c in layer["mlp"]]
        layer["output_scale"] = 1.0
    assert make_plan(squared, tiny_model, 0.3, "global").layers == plan_energy.layers
    assert plan_energy.summary()["removed_attention_mlp"] == pytest.approx(0.3, abs=float(costs.unit_cost.max()) / costs.layer_params.sum())


def test_uniform_removes_the_same_share_in_every_layer(tiny_model):
    for unit in units_for(tiny_model):
        plan = make_plan(fake_scores(tiny_model, unit=unit), tiny_model, 0.4, "uniform")
        costs = plan.costs()
        kept_units, _ = plan.kept_counts()
        expected_units = costs.units - np.floor(0.4 * costs.units + 0.5)
        assert (kept_units == np.maximum(expected_units, 1)).all()
        for layer in plan.summary()["layers"]:
            half_channel = costs.channel_cost[layer["layer"]] / 2 / costs.layer_params[layer["layer"]]
            assert abs(layer["removed"] - 0.4) <= half_channel + 1e-12


def test_skipped_layers_stay_whole_and_the_others_take_more(default_loaded):
    model = default_loaded.model
    scores = fake_scores(model)
    for allocation in ("uniform", "global", "global-std"):
        plan = make_plan(scores, model, 0.3, allocation, skip_first=2, skip_last=3)
        summary = plan.summary()
        for layer in summary["layers"][:2] + summary["layers"][-3:]:
            assert layer["attention_kept"] == layer["attention_total"] and layer["mlp_kept"] == layer["mlp_total"]
        assert abs(summary["removed_attention_mlp"] - 0.3) <= tolerance(plan)
    with pytest.raises(PlanError, match="impossible"):
        make_plan(scores, model, 0.9, "uniform", skip_first=14, skip_last=14)
    with pytest.raises(PlanError, match="leaves none"):
        make_plan(scores, model, 0.2, "uniform", skip_first=15, skip_last=15)


def test_global_divides_by_output_scale_and_parameters():
    model = random_model(tiny_config("llama", gqa=True, layers=4), seed=0)
    scale = [1.0, 1.0, 1000.0, 1.0]  # layer 2's output is huge: its relative changes are tiny
    scores = fake_scores(model, output_scale=scale)
    kept_units, kept_channels = make_plan(scores, model, 0.3, "global").kept_counts()
    assert kept_channels[2] == kept_channels.min() and kept_units[2] == 1
    # without output_scale every layer has the same score distribution: no layer is singled out
    kept_units, kept_channels = make_plan(fake_scores(model, output_scale=[1.0] * 4), model, 0.3, "global").kept_counts()
    assert kept_channels.max() - kept_channels.min() < kept_channels.max() * 0.5


def test_mean_median_block_scale_divides_by_the_geometric_mean_of_mean_and_median():
    model = random_model(tiny_config("llama", gqa=True, layers=4), seed=0)
    mean, median = [2.0, 1.5, 30.0, 2.5], [1.8, 1.4, 3.0, 2.0]  # layer 2: a few huge tokens lift its mean
    scores = fake_scores(model, output_scale=mean, output_median=median)
    geometric = fake_scores(model, output_scale=[(a * b) ** 0.5 for a, b in zip(mean, median)])
    for allocation in ("global", "global-energy"):
        plan = make_plan(scores, model, 0.3, allocation, block_scale="mean-median")
        assert plan.meta["block_scale"] == "mean-median"
        assert plan.layers == make_plan(geometric, model, 0.3, allocation).layers
        assert plan.layers != make_plan(scores, model, 0.3, allocation, block_scale="mean").layers  # layer 2 cut harder
        assert make_plan(scores, model, 0.3, allocation).layers == plan.layers  # auto: the median is recorded
    older = fake_scores(model, output_scale=mean)  # scores made before output_median was recorded
    auto = make_plan(older, model, 0.3, "global-energy")
    assert auto.meta["block_scale"] == "mean"
    assert auto.layers == make_plan(older, model, 0.3, "global-energy", block_scale="mean").layers
    with pytest.raises(PlanError, match="output_median.*Score again, or use block scale 'mean'"):
        make_plan(older, model, 0.3, "global-energy", block_scale="mean-median")
    with pytest.raises(PlanError, match="Unknown block scale 'median'; choose one of auto, mean, mean-median"):
        make_plan(scores, model, 0.3, "global-energy", block_scale="median")
    # weight-only scores record no output scale: no block scale either way
    bare = fake_scores(model, output_scale=[None] * 4)
    assert (make_plan(bare, model, 0.3, "global", block_scale="mean-median").layers
            == make_plan(bare, model, 0.3, "global").layers)


def test_global_std_uses_recorded_flap_statistics():
    model = random_model(tiny_config("llama", gqa=True, layers=4), seed=0)
    stats = [{"attention": [0.0, 1.0], "mlp": [0.0, 1.0]}] * 4
    stats[1] = {"attention": [0.0, 1.0], "mlp": [100.0, 1.0]}  # layer 1's channels sit far below their mean
    kept_units, kept_channels = make_plan(fake_scores(model, standardisation=stats), model, 0.1, "global-std").kept_counts()
    assert kept_channels[1] < 96 / 2  # its channels go first
    assert (kept_channels[[0, 2, 3]] == 96).all()


# ---- constraints --------------------------------------------------------------------------------------

def test_never_empties_a_layer_unless_allowed(tiny_model):
    for unit in units_for(tiny_model):
        geometry = model_geometry(tiny_model)
        cheap_attention = [[0.0] * g.num_units(unit) for g in geometry]  # attention looks useless everywhere
        scores = fake_scores(tiny_model, unit=unit, attention=cheap_attention)
        for allocation in ("uniform", "global", "global-std"):
            plan = make_plan(scores, tiny_model, 0.6, allocation)  # about the most uniform can do here (Qwen3 query slots)
            kept_units, kept_channels = plan.kept_counts()
            assert (kept_units >= 1).all() and (kept_channels >= 1).all(), allocation
        plan = make_plan(scores, tiny_model, 0.8, "global", allow_empty_attention=True)
        assert (plan.kept_counts()[0] == 0).any()
        assert (plan.kept_counts()[1] >= 1).all()


def test_gqa_layouts_stay_valid(tiny_model):
    for unit in units_for(tiny_model):
        for allocation in ("uniform", "global", "global-std"):
            for ratio in (0.2, 0.4, 0.6):
                plan = make_plan(fake_scores(tiny_model, unit=unit, seed=int(ratio * 10)), tiny_model, ratio, allocation)
                for i, (geom, shape) in enumerate(zip(plan.geometry(), plan.pruned_shapes())):
                    q_heads, kv_heads = plan.kept_heads(i)
                    assert shape["num_heads"] % shape["num_kv_heads"] == 0
                    n_rep = shape["num_heads"] // shape["num_kv_heads"]
                    # the kept query heads of every kept KV head: the same count, and from its own group
                    per_group = [[q for q in q_heads if q // geom.n_rep == kv] for kv in kv_heads]
                    assert all(len(g) == n_rep for g in per_group)
                    assert sum(per_group, []) == q_heads
                    if unit == "query_slot":  # the same slots in every group
                        assert len({tuple(q % geom.n_rep for q in g) for g in per_group}) == 1
                        assert kv_heads == list(range(geom.num_key_value_heads))


def test_round_to_multiple_of_8(default_loaded):
    model = default_loaded.model
    for allocation in ("uniform", "global", "global-std"):
        plan = make_plan(fake_scores(model), model, 0.37, allocation, round_to=8)
        _, kept_channels = plan.kept_counts()
        assert ((kept_channels % 8 == 0) | (kept_channels == 1536)).all()
        assert abs(plan.summary()["removed_attention_mlp"] - 0.37) < 0.01


def test_manual_allocation_and_starting_from_another_plan(tiny_model):
    scores = fake_scores(tiny_model)
    n_layers = len(model_geometry(tiny_model))
    start = make_plan(scores, tiny_model, 0.4, "global")
    again = make_plan(scores, tiny_model, None, "manual", layer_ratios=start.meta["layer_ratios"])
    assert again.layers == start.layers
    ratios = [(0.5, 0.25)] + [(0.0, 0.0)] * (n_layers - 1)
    plan = make_plan(scores, tiny_model, None, "manual", layer_ratios=ratios)
    units = plan.geometry()[0].num_units(plan.unit)
    assert len(plan.layers[0]["attention"]) == units - math.floor(0.5 * units + 0.5)
    assert len(plan.layers[0]["mlp"]) == 96 - 24
    assert plan.layers[1]["mlp"] == list(range(96))


def test_manual_plan_that_would_empty_a_layer_is_refused(tiny_model):
    scores = fake_scores(tiny_model)
    n_layers = len(model_geometry(tiny_model))
    ratios = [(0.0, 0.0)] * n_layers
    ratios[1] = (1.0, 0.2)
    with pytest.raises(PlanError, match="Layer 1: attention ratio 1 removes all"):
        make_plan(scores, tiny_model, None, "manual", layer_ratios=ratios)
    plan = make_plan(scores, tiny_model, None, "manual", layer_ratios=ratios, allow_empty_attention=True)
    assert plan.layers[1]["attention"] == [] and plan.pruned_shapes()[1]["num_heads"] == 0
    ratios[1] = (0.5, 1.0)
    with pytest.raises(PlanError, match="Layer 1: MLP ratio 1 removes all"):
        make_plan(scores, tiny_model, None, "manual", layer_ratios=ratios, allow_empty_attention=True)
    with pytest.raises(PlanError, match="pairs, one per layer"):
        make_plan(scores, tiny_model, None, "manual", layer_ratios=ratios[:-1])
    with pytest.raises(PlanError, match="needs layer_ratios"):
        make_plan(scores, tiny_model, 0.2, "manual")


# ---- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", (-0.1, 1.0, 1.5, float("nan"), "0.2", True, None))
def test_ratio_outside_0_1_is_a_clear_error(default_loaded, ratio):
    scores = fake_scores(default_loaded.model)
    with pytest.raises(PlanError, match=r"in \[0, 1\)"):
        make_plan(scores, default_loaded.model, ratio, "uniform")


def test_bad_arguments_are_clear_errors(default_loaded):
    model, scores = default_loaded.model, fake_scores(default_loaded.model)
    with pytest.raises(PlanError, match="Unknown allocation"):
        make_plan(scores, model, 0.2, "magic")
    with pytest.raises(PlanError, match="round_to"):
        make_plan(scores, model, 0.2, round_to=0)
    with pytest.raises(PlanError, match="impossible"):
        make_plan(scores, model, 0.99, "global")
    assert set(ALLOCATIONS) >= {"uniform", "global", "manual"}


def test_scores_from_another_model_are_refused(default_loaded):
    tiny = random_model(tiny_config("llama", gqa=True), seed=0)
    with pytest.raises(PlanError, match="another model"):
        make_plan(fake_scores(tiny), default_loaded.model, 0.2)
    wider = random_model(tiny_config("llama", gqa=True, hidden=128, heads=4), seed=0)  # same unit counts
    narrow = random_model(tiny_config("llama", gqa=True), seed=0)
    with pytest.raises(BipError, match="another model"):
        make_plan(fake_scores(wider), narrow, 0.2)


def test_plan_for_another_geometry_is_refused(default_loaded):
    tiny = random_model(tiny_config("llama", gqa=True), seed=0)
    plan = make_plan(fake_scores(tiny), tiny, 0.2)
    with pytest.raises(PlanError, match="another model geometry"):
        plan.summary(default_loaded.model)
    with pytest.raises(PlanError, match="another model geometry"):
        plan.check_matches(default_loaded.model)


# ---- persistence and provenance -----------------------------------------------------------------------

def test_plan_json_round_trip_and_provenance(tmp_path, tiny_model):
    scores = fake_scores(tiny_model, model_name="tiny-test")
    plan = make_plan(scores, tiny_model, 0.3, "global-std", round_to=8)
    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    assert loaded.layers == plan.layers and loaded.unit == plan.unit
    assert loaded.summary() == plan.summary()
    meta = loaded.meta
    assert meta["method"] == "random" and meta["ratio"] == 0.3 and meta["allocation"] == "global-std"
    assert meta["calibration"]["model"] == "tiny-test" and len(meta["layer_ratios"]) == len(plan.layers)
    assert len(meta["geometry"]) == len(plan.layers)
    removed = loaded.removed(0)
    assert sorted(removed["mlp"] + plan.layers[0]["mlp"]) == list(range(96))

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="Cannot read"):
        Plan.load(tmp_path / "bad.json")
    broken = plan.to_dict()
    broken["layers"][0]["mlp"] = [5, 3]
    with pytest.raises(PlanError, match="sorted distinct"):
        Plan.from_dict(broken)
    with pytest.raises(PlanError, match="Not a BIP Studio plan"):
        Plan.from_dict({"layers": []})


def test_plan_from_real_magnitude_scores(default_loaded):
    from bip_core.scoring import score

    scores = score(default_loaded.model, default_loaded.tokenizer, method="magnitude")
    plan = make_plan(scores, default_loaded.model, 0.2, "global-std", round_to=8)
    assert abs(plan.summary()["removed_attention_mlp"] - 0.2) < 0.01


# ---- CLI ----------------------------------------------------------------------------------------------

def test_plan_cli(tmp_path, capsys):
    _, scores_file = tiny_folder_with_scores(tmp_path, "qwen2")
    out = tmp_path / "plan.json"
    code = cli_main(["plan", "--scores", str(scores_file), "--ratio", "0.3", "--allocation", "global",
                     "--round-to", "8", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and abs(printed["removed_attention_mlp"] - 0.3) < 0.05
    assert Plan.load(out).summary()["params_after"] == printed["params_after"]

    code = cli_main(["plan", "--scores", str(scores_file), "--ratio", "1.2", "--out", str(out)])
    assert code == 2 and "[0, 1)" in capsys.readouterr().err
    code = cli_main(["plan", "--scores", str(scores_file), "--ratio", "0.3", "--allocation", "global",
                     "--block-scale", "mean-median", "--out", str(tmp_path / "median.json")])
    assert code == 2 and "do not record" in capsys.readouterr().err  # these made-up scores have no median
    code = cli_main(["plan", "--scores", str(scores_file), "--allocation", "manual",
                     "--layer-ratios", str(out), "--out", str(tmp_path / "manual.json")])
    assert code == 0 and Plan.load(tmp_path / "manual.json").layers == Plan.load(out).layers


# ---- which units a plan keeps -------------------------------------------------------------------------

def plan_for(allocation, scores, model, **kw):
    if allocation == "manual":
        n_layers = len(model_geometry(model))
        ratios = [(0.5, 0.25 + 0.5 * i / n_layers) for i in range(n_layers)]
        return make_plan(scores, model, None, "manual", layer_ratios=ratios, **kw)
    return make_plan(scores, model, 0.2 if allocation in ("mlp-only", "paper-scaled") else 0.4, allocation, **kw)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_every_allocation_keeps_the_top_scored_units_of_each_layer(tiny_model, allocation):
    for unit in units_for(tiny_model):
        for seed in (0, 1):
            scores = permutation_scores(tiny_model, unit, seed)
            plan = plan_for(allocation, scores, tiny_model, round_to=4 if seed else 1)
            kept_units, kept_channels = plan.kept_counts()
            assert kept_units.sum() + kept_channels.sum() < plan.costs().units.sum() + plan.costs().channels.sum()
            for i, layer in enumerate(plan.layers):
                for key in ("attention", "mlp"):
                    s = np.asarray(scores.layers[i][key])
                    best = sorted(np.argsort(-s)[:len(layer[key])].tolist())
                    assert layer[key] == best, (unit, i, key)
                    # and every kept unit outscores every removed one
                    removed = plan.removed(i)[key]
                    if layer[key] and removed:
                        assert s[layer[key]].min() > s[removed].max()


def test_allocations_are_dispatched_from_one_table():
    from bip_core.allocation import ALLOCATORS, PRIORITIES

    assert ALLOCATIONS == tuple(ALLOCATORS) == ("uniform", "global", "global-energy", "global-std", "mlp-only",
                                                "paper", "paper-scaled", "manual")
    assert set(PRIORITIES) == {"global", "global-energy", "global-std"}  # each a ranking of all units


def test_a_new_ranking_is_one_table_entry(monkeypatch, tiny_model):
    """An MLP-only ranking (attention never removed) as one PRIORITIES-style entry in ALLOCATORS."""
    from bip_core import allocation

    def mlp_only(req, i, scale):
        units, channels = allocation.PRIORITIES["global"](req, i, scale)
        return np.full(units.shape, np.inf), channels

    monkeypatch.setitem(allocation.ALLOCATORS, "mlp-ranked", lambda req: allocation.global_counts(req, mlp_only))
    plan = make_plan(fake_scores(tiny_model), tiny_model, 0.3, "mlp-ranked")
    kept_units, kept_channels = plan.kept_counts()
    assert (kept_units == plan.costs().units).all() and kept_channels.sum() < plan.costs().channels.sum()
    assert abs(plan.summary()["removed_attention_mlp"] - 0.3) <= tolerance(plan) * 2


def test_version_1_plan_files_still_load(tmp_path, tiny_model):
    """Version 1 recorded the geometry as num_heads / num_kv_heads / intermediate / hidden."""
    plan = make_plan(fake_scores(tiny_model), tiny_model, 0.3, "global")
    old = json.loads(json.dumps(plan.to_dict()))
    old["version"] = 1
    old["meta"]["geometry"] = [{"num_heads": g.num_attention_heads, "num_kv_heads": g.num_key_value_heads, "head_dim": g.head_dim,
                                "intermediate": g.intermediate_size, "hidden": g.hidden_size} for g in plan.geometry()]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Plan.load(tmp_path / "old.json")
    assert loaded.layers == plan.layers and loaded.geometry() == model_geometry(tiny_model)
    assert loaded.meta["geometry"] == plan.meta["geometry"] and loaded.to_dict()["version"] == 2
    assert loaded.summary() == plan.summary()
    loaded.check_matches(tiny_model)
    old["version"] = 7
    with pytest.raises(PlanError, match="version 7 is not supported"):
        Plan.from_dict(old)


def test_plan_save_keeps_the_old_file_and_no_temporary_file(tmp_path, tiny_model):
    plan = make_plan(fake_scores(tiny_model), tiny_model, 0.3, "global")
    path = plan.save(tmp_path / "plan.json")
    before = path.read_text()
    plan.meta["note"] = object()  # not JSON
    with pytest.raises(PlanError, match="cannot be written as JSON"):
        plan.save(path)
    assert path.read_text() == before and list(tmp_path.iterdir()) == [path]
    del plan.meta["note"]
    with pytest.raises(OSError):  # the target is a folder: os.replace fails after the temporary file exists
        plan.save(tmp_path)
    assert list(tmp_path.iterdir()) == [path]


def _with_method(scores, method: str):
    scores.meta["method"] = method
    return scores


def test_paper_rules_give_the_originals_counts_on_the_default_model(default_loaded):
    """Wanda-sp: int(r * units) and int(r * channels) in every layer; LLM-Pruner the same in layers [4, 28) of 30
    (its [4, 30) of 32); both remove less than r, and the summary says how much."""
    model = default_loaded.model
    wanda = make_plan(_with_method(fake_scores(model), "wanda-sp"), model, 0.2, "paper")
    kept_units, kept_channels = wanda.kept_counts()
    assert (kept_units == 3).all() and (kept_channels == 1536 - int(0.2 * 1536)).all()  # 0 of 3 KV groups go
    assert abs(wanda.summary()["removed_attention_mlp"] - 0.15) < 0.002  # the "removing 15%"
    half = make_plan(_with_method(fake_scores(model), "wanda-sp"), model, 0.5, "paper")
    assert (half.kept_counts()[0] == 3 - int(0.5 * 3)).all() and (half.kept_counts()[1] == 768).all()
    taylor = make_plan(_with_method(fake_scores(model), "taylor"), model, 0.2, "paper")
    kept_units, kept_channels = taylor.kept_counts()
    inside = np.zeros(30, dtype=bool)
    inside[4:28] = True
    assert (kept_channels[inside] == 1229).all() and (kept_channels[~inside] == 1536).all()
    assert taylor.summary()["removed_attention_mlp"] < wanda.summary()["removed_attention_mlp"]


@pytest.mark.parametrize("method,ratio", [("wanda-sp", 0.2), ("wanda-sp", 0.5), ("taylor", 0.2), ("taylor", 0.5)])
def test_paper_scaled_reaches_the_asked_ratio_with_the_methods_own_shape(default_loaded, method, ratio):
    model = default_loaded.model
    plan = make_plan(_with_method(fake_scores(model), method), model, ratio, "paper-scaled")
    assert abs(plan.summary()["removed_attention_mlp"] - ratio) < 0.04  # whole KV groups are coarse steps
    kept_units, kept_channels = plan.kept_counts()
    active = slice(None) if method == "wanda-sp" else slice(4, 28)
    assert len(set(kept_channels[active].tolist())) == 1  # the same count in every pruned layer
    if method == "taylor":
        assert (kept_channels[:4] == 1536).all() and (kept_units[28:] == 3).all()


def test_paper_follows_flap_and_bip_global_rankings(default_loaded):
    model = default_loaded.model
    for method, ranking in (("flap", "global-std"), ("bip", "global-energy")):
        scores = _with_method(fake_scores(model), method)
        assert make_plan(scores, model, 0.3, "paper").layers == make_plan(scores, model, 0.3, ranking).layers


def test_mlp_only_keeps_attention_and_cuts_every_mlp_alike(default_loaded):
    model = default_loaded.model
    plan = make_plan(fake_scores(model), model, 0.3, "mlp-only")
    kept_units, kept_channels = plan.kept_counts()
    assert (kept_units == 3).all() and len(set(kept_channels.tolist())) == 1
    assert abs(plan.summary()["removed_attention_mlp"] - 0.3) < 0.001
    with pytest.raises(PlanError, match="MLP-only"):
        make_plan(fake_scores(model), model, 0.9, "mlp-only")

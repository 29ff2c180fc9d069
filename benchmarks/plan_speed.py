"""How long recomputing a plan from existing scores takes (the app does it on every slider move).

    .venv/bin/python benchmarks/plan_speed.py [--model default] [--repeats 30]

Prints the median and worst time of `make_plan` (+ `Plan.summary`) per allocation and ratio on the
default model (30 layers). Scores are random numbers in the real schema: plan time does not depend
on which method made them. Target: well under 100 ms.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.architecture import default_unit, model_geometry  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scores import FORMAT, Scores, geometry_record  # noqa: E402


def random_scores(model, unit: str) -> Scores:
    geometry = model_geometry(model)
    rng = np.random.default_rng(0)
    layers = [{"attention": rng.random(g.num_units(unit)).tolist(), "mlp": rng.random(g.intermediate_size).tolist(),
               "output_scale": float(1 + rng.random())} for g in geometry]
    meta = {"format": FORMAT, "method": "random", "model": "benchmark", "unit": unit, "geometry": geometry_record(geometry)}
    return Scores.from_dict({"layers": layers, "meta": meta})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    model = load_model(args.model).model
    geometry = model_geometry(model)
    print(f"model {args.model}: {len(geometry)} layers, {geometry[0].num_attention_heads} heads / {geometry[0].num_key_value_heads} kv, "
          f"intermediate {geometry[0].intermediate_size}; {args.repeats} repeats each")
    print(f"{'unit':>10} {'allocation':>10} {'ratio':>5} {'round_to':>8} {'median ms':>9} {'max ms':>7} {'removed':>8}")
    worst = 0.0
    units = [default_unit(geometry[0])] + (["query_slot"] if geometry[0].n_rep > 1 else [])
    for unit in units:
        scores = random_scores(model, unit)
        for allocation in ("uniform", "global", "global-std"):
            for ratio, round_to in ((0.2, 1), (0.5, 8)):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    plan = make_plan(scores, model, ratio, allocation, round_to=round_to)
                    summary = plan.summary()
                    times.append((time.perf_counter() - start) * 1000)
                worst = max(worst, max(times))
                print(f"{unit:>10} {allocation:>10} {ratio:>5} {round_to:>8} {statistics.median(times):>9.1f} "
                      f"{max(times):>7.1f} {summary['removed_attention_mlp']:>8.4f}")
    print(f"worst single recompute: {worst:.1f} ms (target: well under 100 ms)")


if __name__ == "__main__":
    main()

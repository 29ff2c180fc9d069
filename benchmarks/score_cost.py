"""Cost of scoring on the default model: wall time and peak memory of LLM-BIP next to a plain decoder
forward pass over the same calibration tokens and next to every baseline.

    .venv/bin/python benchmarks/score_cost.py [--windows 16,64,256] [--seq-len 128] [--batch-size 8]
        [--pipeline whole|layerwise] [--methods "bip,flap,..."] [--repeat 2] [--threads 1] [--json out.json]
    .venv/bin/python benchmarks/score_cost.py --breakdown [--windows 16,128]   # where LLM-BIP's extra time goes
    .venv/bin/python benchmarks/score_cost.py --shape 7b --layers 1 --dtype float32 --windows 16,64 --paired --repeat 5
    .venv/bin/python benchmarks/score_cost.py --paired --windows 16,64 --repeat 7 --bip-option probe_share=64
    .venv/bin/python benchmarks/score_cost.py --flops --shape 7b --windows 16,64,256   # arithmetic only, no timing

--shape: the default model, or a random model of a benchmarks/scale.py shape (a config-only folder,
seed 0, the default tokenizer) cut to --layers decoder layers: the cost per layer of a Llama-2-7B or
TinyLlama layer without holding the whole model (--dtype: the model's dtype, default auto).
--paired: in one process, alternate a plain forward and LLM-BIP --repeat times and print the median of
the per-round ratios (on this machine bfloat16 matrix products vary by up to 2x from run to run, so
fresh-process best-of figures of a bfloat16 model mean little; float32 is steadier).

--windows: calibration sizes (windows of --seq-len tokens), each measured in turn. --pipeline: the
scoring pipeline (bip_core.scoring PIPELINES); "hooks only" then runs that pipeline with statistics
that keep nothing, while "plain forward" is always the model's own forward pass in memory.

Every measurement runs in a fresh process (model loaded, calibration text tokenized, one warm-up
call), so its peak memory is its own. Times are wall-clock and process-CPU seconds of the work
itself; on a shared machine CPU seconds with one thread are the steadier figure (with several
threads, waiting OpenMP threads spin and inflate CPU time). With --repeat > 1 the plain forward, the
bare hooks and BIP run alternately and the best of each is shown. Peak memory is what
bip_core.memory.PeakMemory measures: on CPU the process's peak resident set during the work
(weights, torch and Python included); "+MiB" is the part above the level at its start.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import SHAPES  # noqa: E402

VARIANTS = {  # label -> (method, options); "plain forward" and "hooks only" are the yardsticks
    "plain forward": (None, {}),
    "hooks only": (None, {}),
    "bip": ("bip", {}),  # the default: centred, directional gain (L still estimated, for the app's chart)
    "bip (1+L)": ("bip", {"lipschitz": "measured"}),
    "bip (mean_abs)": ("bip", {"aggregation": "mean_abs"}),
    "flap": ("flap", {}),
    "wanda-sp": ("wanda-sp", {}),
    "taylor": ("taylor", {}),
    "magnitude": ("magnitude", {}),
    "random": ("random", {}),
}
ALTERNATED = ("plain forward", "hooks only", "bip")


def model_spec(shape: str, layers: int | None, folder: Path) -> str:
    """"default", or a config-only folder in `folder` holding a scale.py shape cut to `layers` layers."""
    if shape == "default":
        return "default"
    from transformers import LlamaConfig

    fields = dict(SHAPES[shape], **({"num_hidden_layers": layers} if layers else {}))
    LlamaConfig(**fields, tie_word_embeddings=False).save_pretrained(folder)
    return str(folder)


def model_label(args) -> str:
    return f"{args.shape} model{f' ({args.layers} layers)' if args.layers else ''}"


def plain_forward(model, input_ids, batch_size: int) -> None:
    """The yardstick: the model's own decoder forward over the calibration batches, no hooks."""
    import torch

    with torch.no_grad():
        for batch in torch.split(input_ids, batch_size):
            model.model(input_ids=batch, use_cache=False)


def measure(label: str, samples: int, seq_len: int, batch_size: int, pipeline: str = "whole",
            spec: str = "default", dtype: str = "auto") -> dict:
    """One measurement in this process."""
    import torch

    from bip_core.calibration import LayerStats, run_calibration
    from bip_core.pipeline import run_layerwise
    from bip_core.weights import ModuleWeights
    from bip_core.data import calibration_windows
    from bip_core.loading import load_model
    from bip_core.memory import PeakMemory
    from bip_core.scoring import score

    class Nothing(LayerStats):  # statistics that keep nothing: the driver's hooks alone
        def on_block(self, taps):
            pass

    loaded = load_model(spec, dtype=dtype, pipeline="whole")
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = calibration_windows(tokenizer, "wiki-bb", samples, seq_len, 0)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        model.model(input_ids=input_ids[:2, :16], use_cache=False)
    method, options = VARIANTS[label]

    def work():
        if label == "plain forward":
            plain_forward(model, input_ids, batch_size)
        elif label == "hooks only":
            stats = [Nothing(model, i, "kv_group", {}, 0) for i in range(len(model.model.layers))]
            if pipeline == "layerwise":
                run_layerwise(model, ModuleWeights(model), input_ids, stats, batch_size=batch_size, device="cpu",
                              dtype=model.dtype)
            else:
                run_calibration(model, input_ids, stats, batch_size=batch_size)
        else:
            score(model, tokenizer, method, samples=samples, seq_len=seq_len, batch_size=batch_size,
                  pipeline=pipeline, **options)

    started, cpu = time.perf_counter(), time.process_time()
    with PeakMemory() as memory:
        work()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "threads": torch.get_num_threads(), **memory.result()}


# LLM-BIP's statistics, by what they measure: the methods of bip_core.scoring.bip.Stats whose CPU time --breakdown sums
BREAKDOWN = {"probes (gain and L, their MLP call)": ("probe_gains", "probe_lipschitz", "mlp"),
             "attention units' covariance": ("on_o_input",), "channel statistics": ("on_down_input",),
             "finish (Grams, column norms, L)": ("finish",)}


def breakdown(windows: int, args) -> None:
    """In this process: CPU seconds of LLM-BIP's statistics by kind (BREAKDOWN), as shares of a plain forward."""
    import collections

    import torch

    import bip_core.scoring.bip as bip

    torch.set_num_threads(args.threads)
    spent = collections.Counter()
    nested = [0.0]  # time of the timed calls inside the one running: each kind counts its own time only

    def timed(kind, original):
        def method(*a, **k):
            started, outer, nested[0] = time.process_time(), nested[0], 0.0
            try:
                return original(*a, **k)
            finally:
                took = time.process_time() - started
                spent[kind] += took - nested[0]
                nested[0] = outer + took
        return method

    originals = {name: getattr(bip.Stats, name) for names in BREAKDOWN.values() for name in names}
    with tempfile.TemporaryDirectory() as folder:
        spec = model_spec(args.shape, args.layers, Path(folder))
        plain = measure("plain forward", windows, args.seq_len, args.batch_size, args.pipeline, spec,
                        args.dtype)["cpu_seconds"]
        for kind, names in BREAKDOWN.items():
            for name in names:
                setattr(bip.Stats, name, timed(kind, originals[name]))
        try:
            total = measure("bip", windows, args.seq_len, args.batch_size, args.pipeline, spec,
                            args.dtype)["cpu_seconds"]
        finally:
            for name, original in originals.items():
                setattr(bip.Stats, name, original)
    print(f"\n{windows} x {args.seq_len} tokens, {args.pipeline}: plain forward {plain:.2f} CPU s, LLM-BIP "
          f"{total:.2f} ({total / plain:.2f}x)")
    for kind in BREAKDOWN:
        print(f"  {kind:<38} {spent[kind]:7.2f} s {spent[kind] / plain:7.1%} of the plain forward")


def bip_options(args) -> dict:
    """--bip-option KEY=VALUE pairs (LLM-BIP's options other than its defaults; --paired only)."""
    return dict(pair.split("=", 1) for pair in args.bip_option)


def paired(windows: int, args) -> dict:
    """In one process: --repeat rounds of a plain forward then LLM-BIP on the same model and tokens; prints
    each round's ratio of CPU seconds and their median (steadier than best-of on a machine whose speed wanders)."""
    import statistics

    import torch

    from bip_core.data import calibration_windows
    from bip_core.loading import load_model
    from bip_core.scoring import score

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        loaded = load_model(model_spec(args.shape, args.layers, Path(folder)), dtype=args.dtype, pipeline="whole")
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = calibration_windows(tokenizer, "wiki-bb", windows, args.seq_len, 0)

    def plain():
        plain_forward(model, input_ids, args.batch_size)

    def bip():
        score(model, tokenizer, "bip", samples=windows, seq_len=args.seq_len, batch_size=args.batch_size,
              pipeline=args.pipeline, **bip_options(args))

    def cpu_seconds(work) -> float:
        started = time.process_time()
        work()
        return time.process_time() - started

    plain()  # warm-up
    rounds = [(cpu_seconds(plain), cpu_seconds(bip)) for _ in range(max(1, args.repeat))]
    ratios = [b / p for p, b in rounds]
    print(f"\n{model_label(args)}, {model.dtype}, {windows} x "
          f"{args.seq_len} tokens, {args.pipeline}: plain forward / LLM-BIP CPU s per round "
          + ", ".join(f"{p:.2f} / {b:.2f}" for p, b in rounds)
          + f"\n  ratio per round {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x",
          flush=True)
    return {"rounds": rounds, "median_ratio": statistics.median(ratios)}


def layer_flops(config, windows: int, seq_len: int, options: dict | None = None) -> dict[str, float]:
    """Floating-point operations per decoder layer (multiply-adds count 2): the plain forward's, and the
    arithmetic LLM-BIP's default configuration adds to it (bip_core.scoring.bip), for windows x seq_len tokens.

    forward     the linears, and attention's two products over the causal half of each window
    covariance  the unit covariance of z (centred unit change; the uncentred ||W_g z|| costs the same)
    probes      (units + 1) MLP passes per probed token (bip.probe_tokens), and W_g z_g for the gains
    grams       G_g = W_g^T W_g, once per layer
    Everything else LLM-BIP does is a pass over a tensor (sums, squares, norms): memory-bound, not counted."""
    from bip_core.architecture import LayerGeometry, default_unit
    from bip_core.scoring import bip

    options = {**bip.DEFAULTS, **(options or {})}
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden, inter, tokens = config.hidden_size, config.intermediate_size, windows * seq_len
    geometry = LayerGeometry(heads, kv, head_dim, inter, hidden)
    unit = default_unit(geometry)
    units, width = geometry.num_units(unit), len(geometry.unit_heads(unit, 0)[0]) * head_dim
    mlp_pass = 2 * 3 * hidden * inter  # one token through gate, up and down
    probed = bip.probe_tokens(tokens, units if options["lipschitz"] == "directional" else 0, options)
    return {"forward": tokens * (2 * hidden * (2 * heads + 2 * kv) * head_dim + mlp_pass)
                       + 2 * 2 * heads * head_dim * windows * seq_len * (seq_len + 1) / 2,
            "covariance": units * width**2 * tokens * 2,
            "probes": probed * ((units + 1) * mlp_pass + units * 2 * width * hidden),
            "grams": units * width**2 * hidden * 2,
            "probe tokens": probed}


def flop_table(args, sizes: list[int]) -> None:
    """Prints layer_flops as shares of the forward, for each calibration size."""
    from transformers import AutoConfig, LlamaConfig

    if args.shape == "default":
        from bip_core.loading import resolve_folder

        config = AutoConfig.from_pretrained(resolve_folder("default"))
    else:
        config = LlamaConfig(**SHAPES[args.shape])
    print(f"\n{args.shape} model: FLOPs LLM-BIP adds to a plain forward, per layer (arithmetic, not timed)")
    print(f"{'windows':>8} {'probe tokens':>13} {'covariance':>11} {'probes':>8} {'grams':>7} {'sum':>7}")
    for windows in sizes:
        f = layer_flops(config, windows, args.seq_len)
        shares = {k: f[k] / f["forward"] for k in ("covariance", "probes", "grams")}
        print(f"{windows:>8} {f['probe tokens']:>13} " + " ".join(f"{v:>{w}.1%}" for v, w in
                                                                  zip(shares.values(), (11, 8, 7)))
              + f" {sum(shares.values()):>7.1%}")


def in_fresh_process(label: str, windows: int, args) -> dict:
    command = [sys.executable, __file__, "--only", label, "--windows", str(windows), "--seq-len",
               str(args.seq_len), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--pipeline", args.pipeline, "--shape", args.shape, "--dtype", args.dtype,
               *(["--layers", str(args.layers)] if args.layers else [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def measure_size(windows: int, labels: list[str], args) -> dict[str, dict]:
    """Best of --repeat rounds of every label at one calibration size; prints a table."""
    tokens = windows * args.seq_len
    print(f"\n{model_label(args)}, {args.dtype}, {windows} x {args.seq_len} = {tokens} tokens, batch {args.batch_size}, "
          f"{args.pipeline} pipeline, {args.threads} torch thread(s), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, dict] = {}

    def run(label):
        result = in_fresh_process(label, windows, args)
        if label not in results or result["cpu_seconds"] < results[label]["cpu_seconds"]:
            results[label] = result
        print(f"  {label:<16} {result['seconds']:8.2f} s wall {result['cpu_seconds']:8.2f} s CPU", flush=True)

    for _ in range(max(1, args.repeat)):
        for label in ALTERNATED:
            if label in labels or label != "bip":
                run(label)
    for label in labels:
        if label not in ALTERNATED:
            run(label)
    plain, plain_cpu = results["plain forward"]["seconds"], results["plain forward"]["cpu_seconds"]
    mib = 2 ** 20
    print(f"\n{'':<16} {'wall s':>8} {'x plain':>8} {'CPU s':>8} {'x plain':>8} {'peak MiB':>9} {'+MiB':>7}")
    for label, r in results.items():
        extra = (r["peak_memory_bytes"] - r["memory_at_start_bytes"]) / mib
        print(f"{label:<16} {r['seconds']:8.2f} {r['seconds'] / plain:8.2f} {r['cpu_seconds']:8.2f} "
              f"{r['cpu_seconds'] / plain_cpu:8.2f} {r['peak_memory_bytes'] / mib:9.0f} {extra:7.0f}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="64", help="calibration windows, a comma list (e.g. 16,64,256)")
    parser.add_argument("--samples", type=int, default=None, help=argparse.SUPPRESS)  # old name of --windows N
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pipeline", default="whole", choices=("whole", "layerwise"))
    parser.add_argument("--shape", default="default", choices=("default", *SHAPES),
                        help="the default model, or a random model of a benchmarks/scale.py shape")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers of a --shape model (default: all)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--methods", default=",".join(v for v in VARIANTS if v not in ALTERNATED[:2]),
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of plain forward / hooks / bip (best shown)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady CPU times)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: in one process, LLM-BIP's statistics by kind as shares of a plain forward")
    parser.add_argument("--paired", action="store_true",
                        help="instead: in one process, --repeat rounds of plain forward then LLM-BIP, median ratio")
    parser.add_argument("--bip-option", action="append", default=[], metavar="KEY=VALUE",
                        help="with --paired: an LLM-BIP option other than its default (e.g. probe_share=64)")
    parser.add_argument("--flops", action="store_true",
                        help="instead: the arithmetic LLM-BIP adds to a plain forward, per layer (no timing)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = [args.samples] if args.samples else [int(w) for w in args.windows.split(",") if w.strip()]
    if args.flops:
        flop_table(args, sizes)
        return 0
    if args.breakdown:
        for windows in sizes:
            breakdown(windows, args)
        return 0
    if args.paired:
        figures = {str(windows): paired(windows, args) for windows in sizes}
        if args.json:
            Path(args.json).write_text(json.dumps({"seq_len": args.seq_len, "batch_size": args.batch_size,
                                                   "threads": args.threads, "pipeline": args.pipeline,
                                                   "shape": args.shape, "layers": args.layers, "dtype": args.dtype,
                                                   "bip_options": bip_options(args), "paired": figures}, indent=2))
        return 0
    if args.only:
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as folder:
            result = measure(args.only, sizes[0], args.seq_len, args.batch_size, args.pipeline,
                             model_spec(args.shape, args.layers, Path(folder)), args.dtype)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in labels if m not in VARIANTS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(VARIANTS)}")
    by_size = {windows: measure_size(windows, labels, args) for windows in sizes}
    print(f"\nCPU seconds x plain forward ({args.pipeline} pipeline):")
    print(f"{'':<16}" + "".join(f"{w:>8}" for w in sizes))
    for label in next(iter(by_size.values())):
        print(f"{label:<16}" + "".join(f"{r[label]['cpu_seconds'] / r['plain forward']['cpu_seconds']:8.2f}"
                                        for r in by_size.values()))
    print(f"\npeak memory: {next(iter(by_size[sizes[0]].values()))['peak_memory_kind']}; +MiB: above the level "
          "at the start. Best of --repeat by CPU seconds.")
    if args.json:
        Path(args.json).write_text(json.dumps({"seq_len": args.seq_len, "batch_size": args.batch_size,
                                               "threads": args.threads, "pipeline": args.pipeline,
                                               "shape": args.shape, "layers": args.layers, "dtype": args.dtype,
                                               "results": {str(w): r for w, r in by_size.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

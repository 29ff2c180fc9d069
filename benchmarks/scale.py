"""Scale benchmark: score, plan, prune and evaluate models far larger than memory, step by step.

    python benchmarks/scale.py                       # the Llama-2-7B shape, layer-wise (make scale)
    python benchmarks/scale.py --shape 1.1b --pipeline whole
    python benchmarks/scale.py --shape default --pipeline layerwise

For a random shape it first writes a checkpoint of that shape (bfloat16, seed 0) tensor by tensor
into a temporary folder, never holding the model: names and shapes come from the family's own
modelling class built on the meta device, each tensor is drawn (normal, std 0.02; norms 1) from
a generator seeded by its index and streamed into ~2 GB safetensors shards. The tokenizer is a
byte-level BPE of exactly the shape's vocabulary trained on the wiki-bb train split (Llama-2's
32,000; the default tokenizer has 49,152 and would not fit).

Then each step runs as its own `python -m bip_core` process, as a user would run it, and the
benchmark prints its wall time and peak resident set (VmHWM, reset when the process starts):

    score  bip, 8 x 128 wiki-bb tokens
    plan   ratio 0.3, global-energy
    prune  with bias compensation (`--compensation refit`: refit of the kept o_proj/down_proj columns,
           fitted on a second calibration pass), exported (streamed from the shards when layer-wise)
    eval   perplexity of the export on 2 wiki-bb test windows (layer-wise runs: on the CPU with
           `--max-memory cpu=2GiB --offload-folder`, accelerate reading the rest from disk)

`--steps prune,eval --work DIR` runs only those steps, on the checkpoint, scores and plan an earlier
run left in DIR (`--keep`). Rows are appended to results/scale.csv. Target (issue 11): the 7B shape within 4 GiB peak RSS at
every step on a 2-core, 24 GB CPU machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # the config fields that differ from transformers' LlamaConfig defaults
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
}
GIB = 1024**3
CSV_FIELDS = ["shape", "pipeline", "dtype", "device", "compensation", "step", "seconds", "peak_rss_gib", "model_gib",
              "detail"]
STEPS = ("score", "plan", "prune", "eval")


def train_tokenizer(vocab_size: int, folder: Path) -> None:
    """A byte-level BPE of `vocab_size` tokens trained on wiki-bb train, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bip_core.data import load_texts

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(load_texts("wiki-bb", "train"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    fast.save_pretrained(folder)
    if len(fast) != vocab_size:  # BPE stops early on small corpora: the config must still cover it
        print(f"note: the tokenizer has {len(fast)} tokens (asked {vocab_size})", file=sys.stderr)


def write_checkpoint(shape: str, folder: Path, seed: int = 0) -> float:
    """Write a random checkpoint of `shape` into `folder` tensor by tensor; returns its size in GiB."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bip_core.weights import TensorEntry, write_sharded

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, dtype="bfloat16")
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    entries = [TensorEntry(name, tuple(t.shape), torch.bfloat16) for name, t in skeleton.state_dict().items()]
    index = {entry.name: i for i, entry in enumerate(entries)}

    def fetch(name: str) -> torch.Tensor:
        shape_ = entries[index[name]].shape
        if name.endswith("norm.weight"):
            return torch.ones(shape_, dtype=torch.bfloat16)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index[name])
        return (torch.randn(shape_, generator=generator) * 0.02).to(torch.bfloat16)

    folder.mkdir(parents=True, exist_ok=True)
    write_sharded(folder, entries, fetch, max_shard_bytes=2 * 10**9)
    config.save_pretrained(folder)
    train_tokenizer(config.vocab_size, folder)
    return sum(entry.nbytes for entry in entries) / GIB


# Each step runs as `python -m bip_core ARGV` under this wrapper, which resets the process's peak RSS at the
# start and writes it at the end. (os.wait4's ru_maxrss would not do: Linux carries the parent's peak across
# vfork + exec, so a child would report at least the benchmark's own peak.)
PEAK_WRAPPER = """
import atexit, os, runpy, sys
open('/proc/self/clear_refs', 'w').write('5')
def report():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(os.environ['BIP_PEAK_FILE'], 'w').write(line.split()[1])
atexit.register(report)
sys.argv = ['bip_core', *sys.argv[1:]]
runpy.run_module('bip_core', run_name='__main__')
"""


def run_step(argv: list[str], work: Path) -> tuple[float, float, str]:
    """Run `python -m bip_core ARGV` in its own process: (seconds, its peak RSS in GiB, last stdout lines)."""
    out_path, err_path, peak_path = work / "step.out", work / "step.err", work / "step.peak"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BIP_PEAK_FILE": str(peak_path)}
    peak_path.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        code = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *argv], cwd=ROOT, env=env, stdout=out,
                              stderr=err).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"step `{' '.join(argv)}` failed ({code}):\n{err_path.read_text()[-3000:]}")
    lines = out_path.read_text().strip().splitlines()
    return seconds, int(peak_path.read_text()) * 1024 / GIB, " ".join(lines[-3:])


def steps(model: str, work: Path, pipeline: str, dtype: str, device: str,
          compensation: str = "bias") -> list[tuple[str, list[str]]]:
    common = ["--device", device, "--dtype", dtype]
    scores, plan, export = work / "scores.json", work / "plan.json", work / "export"
    # eval runs the export whole; on the CPU under a 2 GiB budget, accelerate streams the rest from disk
    capped = ["--max-memory", "cpu=2GiB", "--offload-folder", str(work / "offload")] \
        if device == "cpu" and pipeline == "layerwise" else []
    return [
        ("score", ["score", "--model", model, *common, "--pipeline", pipeline, "--method", "bip", "--samples", "8",
                   "--seq-len", "128", "--quiet", "--out", str(scores)]),
        ("plan", ["plan", "--model", model, *common, "--pipeline", pipeline, "--scores", str(scores),
                  "--ratio", "0.3", "--allocation", "global-energy", "--out", str(plan)]),
        ("prune", ["prune", "--model", model, *common, "--pipeline", pipeline, "--scores", str(scores),
                   "--plan", str(plan), "--compensation", compensation, "--no-sequential", "--out", str(export)]),
        ("eval", ["eval", "--model", str(export), *common, *capped, "--windows", "2", "--json"]),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, "default"], default="7b")
    parser.add_argument("--pipeline", choices=["layerwise", "whole", "auto"], default="layerwise")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compensation", choices=["none", "bias", "refit"], default="bias",
                        help="the prune step's compensation (refit: a calibration pass and a ridge solve per layer)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="the steps to run, comma-separated (later ones reuse the outputs earlier runs left in --work)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the export")
    parser.add_argument("--out", default=str(ROOT / "results" / "scale.csv"))
    args = parser.parse_args(argv)
    wanted = args.steps.split(",")
    if not set(wanted) <= set(STEPS):
        parser.error(f"--steps: choose among {', '.join(STEPS)}")

    work = Path(args.work or tempfile.mkdtemp(prefix="bip-scale-"))
    rows = []
    try:
        model, model_gib = "default", float("nan")
        if args.shape != "default":
            model = str(work / "checkpoint")
            started = time.perf_counter()
            if not (work / "checkpoint" / "config.json").exists():
                model_gib = write_checkpoint(args.shape, work / "checkpoint")
            else:
                from bip_core.weights import open_weights
                model_gib = open_weights(model).nbytes() / GIB
            print(f"checkpoint {args.shape}: {model_gib:.2f} GiB in bfloat16, {time.perf_counter() - started:.0f} s",
                  flush=True)
        for step, step_argv in steps(model, work, args.pipeline, args.dtype, args.device, args.compensation):
            if step not in wanted:
                continue
            seconds, peak, detail = run_step(step_argv, work)
            row = {"shape": args.shape, "pipeline": args.pipeline, "dtype": args.dtype, "device": args.device,
                   "compensation": args.compensation if step == "prune" else "", "step": step, "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2),
                   "model_gib": round(model_gib, 2), "detail": detail[:200]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _append(Path(args.out), rows)
    return 0


def _append(path: Path, rows: list[dict]) -> None:
    """Append `rows`; a file with older columns is rewritten under the union of both (older rows left blank)."""
    old_rows, fields = [], list(CSV_FIELDS)
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_rows = list(reader)
            fields = [*(reader.fieldnames or []), *(name for name in CSV_FIELDS if name not in (reader.fieldnames or []))]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*old_rows, *rows])
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())

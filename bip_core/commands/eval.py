"""`python -m bip_core eval --model SPEC_OR_EXPORT [--ppl SOURCE|none] [--split S] [--windows N]
[--tasks t1,t2 | --tasks offline | --tasks standard] [--limit N] [--speed] [--threads N] --json`

Perplexity with the paper protocol (always with dataset, split, windows and token count), zero-shot
accuracy through lm-eval on the in-memory model, and measured speed, of a model or an export.
"""
from __future__ import annotations

import sys
import time

from .common import WHOLE_ONLY, add_device_arguments, add_model_argument, load_kwargs, print_json


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_arguments(parser) -> None:
    from ..data import describe_sources

    add_model_argument(parser)
    add_device_arguments(parser, WHOLE_ONLY)
    parser.add_argument("--ppl", default="wiki-bb", metavar="SOURCE",
                        help=f"perplexity text: {', '.join(describe_sources())}, or 'none' (default wiki-bb)")
    parser.add_argument("--split", default=None,
                        help="train, valid or test (default: the papers' split: test, PTB valid)")
    parser.add_argument("--seq-len", type=int, default=128, help="window length (default 128, the paper's)")
    parser.add_argument("--windows", type=int, default=None, help="only the first N windows (quick checks)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--tasks", default=None,
                        help="zero-shot tasks: 'offline' (local BIG-bench tasks), 'offline-all', 'standard' "
                             "(the 7 Hub tasks), or names such as bb_winowhy,strategyqa,boolq")
    parser.add_argument("--limit", type=int, default=None, help="examples per zero-shot task (default all)")
    parser.add_argument("--task-batch-size", type=int, default=16, help="lm-eval batch size (default 16)")
    parser.add_argument("--speed", action="store_true", help="measure parameters, MACs and throughput")
    parser.add_argument("--speed-batch-sizes", type=_int_list, default=(1, 8), help="default 1,8")
    parser.add_argument("--prompt-len", type=int, default=128, help="speed: prompt tokens (default 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="speed: decoded tokens (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed repeats, median (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _task_line(name: str, entry: dict) -> str:
    stderr = f" +- {entry['stderr']:.4f}" if entry["stderr"] is not None else ""
    chance = f"  chance {entry['chance']:.3f}" if entry["chance"] is not None else ""
    return f"  {name:30s} {entry['metric']:8s} {_number(entry['value'])}{stderr}  n={entry['n']}{chance}"


def _print_text(report: dict) -> None:
    model = report["model"]
    print(f"model: {model['spec']} ({model['family']}, {model['layers']} layers, {model['params']:,} params)")
    ppl = report.get("perplexity")
    if ppl:
        print(f"perplexity {ppl['ppl']:.3f} on {ppl['dataset']} {ppl['split']}: {ppl['windows']} of "
              f"{ppl['total_windows']} windows x {ppl['seq_len']} tokens, {ppl['tokens']} scored tokens "
              f"({ppl['seconds']:.1f} s)")
    zs = report.get("zeroshot")
    if zs:
        for name, entry in zs["tasks"].items():
            print(_task_line(name, entry))
        print(f"zero-shot average {_number(zs['average'])} (chance {_number(zs['average_chance'])}, {zs['seconds']} s)")
    sp = report.get("speed")
    if sp:
        print(f"params {sp['params']['total']:,} (attention+MLP {sp['params']['attention_mlp']:,}), "
              f"{sp['macs']['per_token'] / 1e6:.1f} MMACs/token at context {sp['macs']['context']}, "
              f"weights {sp['memory']['weight_bytes'] / 2**20:.1f} MiB, {sp['settings']['torch_threads']} threads")
        for t in sp["throughput"]:
            print(f"  batch {t['batch_size']}: prefill {_number(t['prefill_tokens_per_s'], 1)} tok/s, "
                  f"decode {_number(t['decode_tokens_per_s'], 1)} tok/s ({_number(t['decode_ms_per_step'], 1)} ms/step)")


def run(args) -> int:
    import torch

    from ..loading import load_model
    from ..perplexity import perplexity
    from ..speed import measure_speed
    from ..zeroshot import zeroshot

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(args.model, **load_kwargs(args))
    report = {"model": loaded.info(), "load_seconds": round(time.perf_counter() - start, 2)}
    if args.ppl and args.ppl.lower() != "none":
        report["perplexity"] = perplexity(loaded.model, loaded.tokenizer, args.ppl, args.split, seq_len=args.seq_len,
                                          windows=args.windows, batch_size=args.batch_size)
    if args.tasks:
        report["zeroshot"] = zeroshot(loaded.model, loaded.tokenizer, args.tasks, limit=args.limit,
                                      batch_size=args.task_batch_size)
    if args.speed:
        report["speed"] = measure_speed(loaded.model, loaded.tokenizer, batch_sizes=args.speed_batch_sizes,
                                        prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print_json(report)
    else:
        _print_text(report)
    sys.stdout.flush()
    return 0

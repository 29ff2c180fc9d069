"""Exploration (valid split): which per-block scale should the global-energy ranking divide by?

    .venv/bin/python benchmarks/explore_block_scale.py [--threads 1]

LLM-BIP's global ranking compares blocks by the *relative* change of their output, score / scale.
The recorded scale is mean_t ||y_t||. On the default model that mean jumps 2.3x at layer 11, where a
massive-activation channel appears on a few tokens, while the median token norm barely moves; so
the middle blocks' changes look small and their MLPs are pruned hardest. This script scores the
default model once (bip defaults, 64 x 128 wiki-bb train, seed 0), measures every block's token
norms on the same windows, and evaluates global-energy plans (with bias compensation) on wiki-bb
VALID (64 windows) with two robust scales in place of the mean: the median token norm, and
1 / sqrt(mean_t 1 / ||y_t||^2), the scale at which the next block's RMSNorm sees a change.
Result (README "Choosing LLM-BIP's configuration"): mixed, so the mean stays.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.architecture import decoder_layers  # noqa: E402
from bip_core.data import calibration_windows  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.perplexity import perplexity  # noqa: E402
from bip_core.plan import make_plan  # noqa: E402
from bip_core.scoring import score  # noqa: E402
from bip_core.surgery import prune_model  # noqa: E402


def token_norms(model, input_ids: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """||y_t|| of every block output, per block: [tokens] each."""
    layers = decoder_layers(model)
    norms: list[list[torch.Tensor]] = [[] for _ in layers]

    def tap(i):
        def hook(_module, _args, output):
            y = output[0] if isinstance(output, tuple) else output
            norms[i].append(torch.linalg.vector_norm(y.float(), dim=-1).flatten())
        return hook

    hooks = [layer.register_forward_hook(tap(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(input_ids), batch_size):
                model.model(input_ids=input_ids[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(n).double() for n in norms]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--windows", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default")
    model, tokenizer = loaded.model, loaded.tokenizer
    scores = score(model, tokenizer, "bip", samples=64, seq_len=128, seed=0)
    norms = token_norms(model, calibration_windows(tokenizer, "wiki-bb", 64, 128, 0))
    scales = {"mean (default)": [n.mean().item() for n in norms],
              "median": [n.median().item() for n in norms],
              "RMSNorm-weighted": [(1 / (1 / n ** 2).mean()).sqrt().item() for n in norms]}
    for name, values in scales.items():
        print(f"{name:17s} per block: {' '.join(f'{v:.0f}' for v in values)}", flush=True)
    for name, values in scales.items():
        variant = copy.deepcopy(scores)
        for layer, value in zip(variant.layers, values):
            layer["output_scale"] = value
        for ratio in (0.2, 0.5):
            plan = make_plan(variant, model, ratio, "global-energy")
            pruned = prune_model(model, plan, bias_compensation=True, scores=variant)
            ppl = perplexity(pruned, tokenizer, "wiki-bb", "valid", seq_len=128, windows=args.windows)["ppl"]
            kept = [len(layer["attention"]) for layer in plan.layers]
            mlp = [len(layer["mlp"]) for layer in plan.layers]
            print(f"{name:17s} r={ratio}: valid PPL {ppl:7.2f}  KV groups kept {sum(kept)} "
                  f"[{''.join(map(str, kept))}]  fewest MLP channels {min(mlp)} (layer {mlp.index(min(mlp))})",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

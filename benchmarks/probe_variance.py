"""How closely a few probe tokens measure LLM-BIP's directional gains (issue 11, item 8), by probe sampling rule.

    .venv/bin/python benchmarks/probe_variance.py [--tokens 8,32,128] [--draws 300]

For every decoder layer of the default model and one calibration batch (8 windows of 128 wiki-bb train
tokens, seed 0), the block-output change of removing each attention unit, ||delta_tg + F(h_t) - F(h_t - delta_tg)||,
and ||delta_tg|| at every token (the "std" default: delta centred on the batch mean). The gain of unit g over
all tokens is sum_t ||Delta y_tg|| / sum_t ||delta_tg||. Then --draws draws of k probe tokens by each rule of
bip.PROBE_SAMPLING give the gain as the scorer would (weighted sums over the probed tokens), and this prints,
per layer, the share of the change at tokens whose MLP output is an outlier (the stratified rule's stratum)
and the rms relative error of the gains against all tokens, averaged over the layer's units; then the
median and mean over layers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.calibration import run_calibration  # noqa: E402
from bip_core.data import calibration_windows  # noqa: E402
from bip_core.loading import load_model  # noqa: E402
from bip_core.scoring import bip  # noqa: E402


class EveryToken(bip.Stats):
    """Per token and unit: ||Delta y_tg|| and ||delta_tg||, with F(h), on the batch it sees."""

    def on_block(self, taps):
        z_units = self.unit_inputs(taps.z.float())
        delta = self.unit_outputs(z_units - z_units.mean(1, keepdim=True))  # [units, tokens, hidden]
        f_moved = self.mlp(bip.removed(taps.h, delta))
        change = (delta + taps.f.float()[None] - f_moved.float()).norm(dim=-1)
        self.per_token = change, delta.norm(dim=-1), taps.f


def gain_errors(change, size, f, rule, k: int, draws: int, generator) -> float:
    """rms relative error of the gains from k tokens drawn by `rule`, averaged over units."""
    exact = change.sum(1) / size.sum(1)
    estimates = []
    for _ in range(draws):
        picked, weight = rule(f, k, generator)
        estimates.append((change[:, picked] @ weight) / (size[:, picked] @ weight))
    relative = torch.stack(estimates) / exact - 1
    return relative.square().mean(0).sqrt().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="8,32,128", help="probe tokens per draw")
    parser.add_argument("--draws", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model("default")
    model = loaded.model
    stats = [EveryToken(model, i, "kv_group", dict(bip.DEFAULTS), 0) for i in range(len(model.model.layers))]
    run_calibration(model, calibration_windows(loaded.tokenizer, "wiki-bb", 8, 128, 0), stats, batch_size=8)
    columns = [(rule, int(k)) for k in args.tokens.split(",") for rule in bip.PROBE_SAMPLING]
    print("layer  outlier tokens  their share of the change  " + "  ".join(f"{r} {k}" for r, k in columns))
    errors = {column: [] for column in columns}
    for s in stats:
        change, size, f = s.per_token
        outlier = bip.outlier_tokens(f)
        share = (change[:, outlier].sum() / change.sum()).item()
        generator = torch.Generator().manual_seed(s.index)
        row = []
        for rule, k in columns:
            errors[rule, k].append(gain_errors(change, size, f, bip.PROBE_SAMPLING[rule], k, args.draws, generator))
            row.append(f"{errors[rule, k][-1]:>{len(rule) + len(str(k)) + 1}.1%}")
        print(f"{s.index:>5}  {int(outlier.sum()):>14}  {share:>25.0%}  " + "  ".join(row))
    for name, reduce in (("median", lambda v: sorted(v)[len(v) // 2]), ("mean", lambda v: sum(v) / len(v))):
        print(f"{name:>5}  {'':>14}  {'':>25}  " + "  ".join(
            f"{reduce(errors[c]):>{len(c[0]) + len(str(c[1])) + 1}.1%}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

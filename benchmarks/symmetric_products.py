"""What accumulating a symmetric product d^T d on its upper blocks only saves (bip_core.calibration.add_outer_upper,
for RunningMoments' scatter matrices and LLM-BIP's Gram matrices) against the whole product (add_outer).

    .venv/bin/python benchmarks/symmetric_products.py [--rows 1024] [--threads 1] [--repeats 10]

For the shapes the statistics meet (units x features: the default model's 3 units of 192 channels and its o_proj and
down_proj inputs, a Llama-2-7B layer's 32 heads of 128 and its o_proj input), prints the median milliseconds of
one accumulation of `rows` tokens both ways and their ratio, and checks that the mirrored result equals the
whole product.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bip_core.calibration import add_outer, add_outer_upper, mirror_upper, symmetric_blocks  # noqa: E402

SHAPES = {"default model: 3 units of 192": (3, 192), "default model: o_proj input": (1, 576),
          "default model: down_proj input": (1, 1536), "7B layer: 32 heads of 128": (32, 128),
          "7B layer: o_proj input": (1, 4096)}


def median_ms(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.rows} rows, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'shape':<34} {'blocks':>6} {'whole ms':>9} {'upper ms':>9} {'ratio':>6}")
    for label, (units, features) in SHAPES.items():
        d = torch.randn(units, args.rows, features, generator=torch.Generator().manual_seed(0))
        whole, upper = torch.zeros(units, features, features), torch.zeros(units, features, features)
        whole_ms = median_ms(lambda: add_outer(whole, d), args.repeats)
        upper_ms = median_ms(lambda: add_outer_upper(upper, d), args.repeats)
        assert torch.allclose(mirror_upper(upper), whole, rtol=1e-4, atol=1e-2), label
        print(f"{label:<34} {len(symmetric_blocks(features)) - 1:>6} {whole_ms:9.2f} {upper_ms:9.2f} "
              f"{upper_ms / whole_ms:6.2f}")


if __name__ == "__main__":
    main()

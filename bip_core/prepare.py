"""One-time set-up, safe to run again: every step skips what is already done."""
from __future__ import annotations

import time

from .paths import cache_dir


def prepare_all(data: bool = True, verbose: bool = True) -> dict:
    from .bigbench_data import prepare_bigbench
    from .default_model import ensure_default_model
    from .offline_tasks import prepare_tasks

    report = {"cache": str(cache_dir())}
    t0 = time.perf_counter()
    report["default_model"] = str(ensure_default_model(verbose=verbose))
    if data:
        report["data"] = prepare_bigbench(verbose=verbose)
        report["tasks"] = prepare_tasks()  # offline lm-eval task files
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report

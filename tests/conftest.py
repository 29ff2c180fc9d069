"""Shared fixtures: the real default model (loaded once) and small random models per family."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Files the app serves (e.g. the export zips, ~430 MB each) land in Gradio's cache, which the app empties only
# after an hour: the suite gives Gradio a folder of its own and removes it at the end (the app servers of the
# browser tests inherit it).
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="bip-tests-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A CPU suite: exact float32 comparisons against CPU tensors. load_model's device="auto" would pick a GPU
# (and bfloat16) where there is one, so GPUs stay hidden unless CUDA_VISIBLE_DEVICES is set explicitly.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from bip_core.loading import load_model, random_model  # noqa: E402
from bip_core.tiny_configs import FAMILIES, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def default_loaded():
    """The embedded SmolLM2-135M-Instruct (do not modify it in a test: it is shared)."""
    return load_model("default")


@pytest.fixture(scope="session")
def tokenizer(default_loaded):
    return default_loaded.tokenizer


@pytest.fixture(params=[(f, g) for f in FAMILIES for g in (True, False)],
                ids=lambda p: f"{p[0]}-{'gqa' if p[1] else 'mha'}")
def tiny_model(request):
    """A random model (seed 0) of each supported family, GQA and MHA."""
    family, gqa = request.param
    return random_model(tiny_config(family, gqa=gqa), seed=0)

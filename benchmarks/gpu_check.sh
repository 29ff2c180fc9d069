#!/usr/bin/env bash
# GPU check (issue 11 item 7): the default model end to end in bfloat16 on CUDA, then the 7B-shaped
# scale benchmark on CUDA. Prints times and peak GPU memory. Run it where a GPU is lent:
#   bash benchmarks/gpu_check.sh            (needs the packages of requirements.txt and `python -m bip_core prepare`)
# Environment: PY (default python3), DEVICE (default cuda), SKIP_7B=1 to stop after the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WORK=$(mktemp -d /tmp/bip-gpu-check.XXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1

"$PY" - <<PYEOF
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PYEOF

step() {  # step NAME ARGS...: one CLI step, its wall time
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$PY" -m bip_core "$@"
  printf '%-8s %6.1f s\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)"
}

common=(--device "$DEVICE" --dtype bfloat16)
step info  info --model default "${common[@]}"
step score score --model default "${common[@]}" --samples 64 --seq-len 128 --quiet --out "$WORK/scores.json"
step plan  plan --model default "${common[@]}" --scores "$WORK/scores.json" --ratio 0.2 --allocation global-energy --out "$WORK/plan.json"
step prune prune --model default "${common[@]}" --scores "$WORK/scores.json" --plan "$WORK/plan.json" --bias-compensation --out "$WORK/export"
step eval  eval --model "$WORK/export" "${common[@]}" --windows 64 --json

"$PY" - "$WORK/export" "$DEVICE" <<'PYEOF'
import sys, time, torch
from bip_core.loading import load_model
from bip_core.generation import generate
loaded = load_model(sys.argv[1], dtype=torch.bfloat16, device=sys.argv[2])
torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
out = generate(loaded.model, loaded.tokenizer, "What is structured pruning?", max_new_tokens=32, temperature=0)
print(f"chat     {time.perf_counter() - t:6.1f} s  peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
print("reply:", out["text"][:200].replace("\n", " "))
PYEOF

if [ "${SKIP_7B:-0}" != 1 ]; then
  "$PY" benchmarks/scale.py --shape 7b --device "$DEVICE" --dtype bfloat16 --pipeline layerwise --out "$WORK/scale.csv"
  cat "$WORK/scale.csv"
fi

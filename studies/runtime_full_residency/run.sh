#!/usr/bin/env bash
# Issue 5's GPU bars for the own runtime at full residency, side by side with llama.cpp.
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   bash studies/runtime_full_residency/run.sh OUT_DIR [MODEL_PATH]
# Writes the qwen3-30b-a3b preset if MODEL_PATH is missing, runs the runtime's kernel tests
# compiled, compares logits with llama.cpp over 32 greedy steps, then measures the runtime
# with llama-bench -p 512 -n 128 -fa 1 -ngl 99 and then bench_runtime.py, one after the other.
set -uo pipefail
out=${1:?output dir}; model=${2:-/tmp/qwen3-30b-a3b.gguf}
here=studies/runtime_full_residency
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
synth=""
if [ ! -f "$model" ]; then
  python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --no-measure > "$out/synth.txt" 2>&1 &
  synth=$!
fi
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_runtime_triton.py tests/test_runtime_model.py \
  > "$out/pytest.txt" 2>&1; echo "pytest exit $?" | tee -a "$out/pytest.txt" | tail -3 "$out/pytest.txt"
[ -z "$synth" ] || wait "$synth"
timeout 240 python3 -m studies.runtime_full_residency.llama_logits "$model" /tmp/llama_logits.npz 2>&1 | tee "$out/llama_logits.txt"
timeout 120 llama-bench -m "$model" -p 512 -n 128 -r 5 -fa 1 -ngl 99 -o json > "$out/llama_bench.json" 2> "$out/llama_bench.err"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
try:
    runs = json.load(open(f"{out}/llama_bench.json"))
    for r in runs:
        print("llama-bench", "pp" if r["n_prompt"] else "tg", r["n_prompt"] or r["n_gen"], round(r["avg_ts"], 1), "±", round(r["stddev_ts"], 1))
except Exception as exc:
    print("llama-bench failed:", exc, open(f"{out}/llama_bench.err").read()[-2000:])
PY
timeout 300 python3 $here/bench_runtime.py "$model" "$out" --llama /tmp/llama_logits.npz ${SWEEP:+--sweep} 2>&1 \
  | tee "$out/bench_runtime.txt" | grep -v "^\s*$" | tail -20

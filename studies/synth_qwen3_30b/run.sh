#!/usr/bin/env bash
# Issue 2's GPU bar: write the qwen3-30b-a3b preset (timed), inspect it, measure its routing,
# and run llama-bench with the flags of ../../shared/ANCHORS.md.
# Usage (GPU machine, project root): bash studies/synth_qwen3_30b/run.sh OUT_DIR [MODEL_PATH]
set -euo pipefail
out=${1:?output dir}; model=${2:-/tmp/qwen3-30b-a3b.gguf}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s%N)
python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --no-measure | tee "$out/synth.txt"
echo "wall milliseconds: $(( ($(date +%s%N) - start) / 1000000 ))" | tee -a "$out/synth.txt"
python3 -m autotune.cli inspect "$model" | tee "$out/inspect.txt"
python3 -c "
from autotune.measured_routing import measure_routing
trace = measure_routing('$model', n_tokens=2048)
print(trace.summary())" | tee "$out/routing.txt"
llama-bench --help > "$out/llama-bench-help.txt" 2>&1 || true
if grep -q -- "--n-cpu-moe" "$out/llama-bench-help.txt"; then split="-ncmoe 0,12,18,24,36,48"; else split=""; fi
llama-bench -m "$model" -p 512 -n 128 -r 2 -fa 1 -ngl 99 $split -o md 2>"$out/llama-bench.err" | tee "$out/llama-bench.md"

#!/usr/bin/env bash
# Issue 27's harness figures for the hybrid cache (the CPU computes the misses) on the
# Qwen3-235B-A22B shape cut to 20 layers, beside llama-bench's fitting --n-cpu-moe configs.
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   [CAPS="16"] [LLAMA="ncmoe11_ub512 ..."] bash studies/hybrid/run.sh OUT_DIR [MODEL] [SETTING ...]
# SETTING: bench_cache.py setting names (default: streaming, static and LFU on the CPU, auto).
# Harness figures are for diagnosis; the served figures come from studies/served.
set -uo pipefail
out=${1:?output dir}; model=${2:-/tmp/hybrid/qwen3-235b-a22b-20l.gguf}; shift $(( $# < 2 ? $# : 2 ))
settings=("$@"); [ ${#settings[@]} -eq 0 ] && settings=(lfu16_zc_pf3 static_cpu lfu16_cpu lfu16_auto_pf2)
here=studies/expert_cache
mkdir -p "$out" "$(dirname "$model")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/gpu.txt"
if [ ! -f "$model" ]; then
  /usr/bin/time -f "synth %e s" python3 -m autotune.cli synth "$model" --preset qwen3-235b-a22b --layers 20 \
    --no-measure > "$out/synth.txt" 2>&1 || { tail "$out/synth.txt"; exit 1; }
  tail -2 "$out/synth.txt"
fi
if [ -n "${LLAMA-ncmoe11_ub512 ncmoe12_ub512}" ]; then  # LLAMA= skips llama-bench
  timeout 240 python3 $here/llama_side.py "$model" "$out/llama.json" --reps 2 --only ${LLAMA-ncmoe11_ub512 ncmoe12_ub512} 2>&1 | tee "$out/llama.txt"
fi
timeout 120 python3 $here/bench_cache.py reference "$model" "$out" 2>&1 | tee "$out/reference.txt" | grep -v "^\s*$" | tail -3
timeout ${CACHE_TIMEOUT:-400} python3 $here/bench_cache.py cache "$model" "$out" --caps ${CAPS:-16} \
  --only "${settings[@]}" 2>&1 | tee "$out/cache.txt" | grep -v "^\s*$" | tail -30

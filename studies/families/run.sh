#!/usr/bin/env bash
# Issue 28's per-family GPU bars at full residency and at a cap, for one preset, in one call:
# logits against llama.cpp along 32 greedy steps (at full residency and at CAP_GIB with the
# misses computed on the CPU), and full-residency decode against llama.cpp all on the GPU.
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   [LAYERS=N] [QUANT=NAME] [KNOBS="KEY=VALUE ..."] [INT8=1] bash studies/families/run.sh OUT_DIR PRESET CAP_GIB
# INT8=1: bench_runtime.py also decodes with the experts' gate+up on the 8-bit input (--int8).
# KNOBS: the cache config at the cap (default: the hybrid's served knobs, misses on the CPU).
# Writes /tmp/families/PRESET.gguf if missing (synthetic weights, the preset's real shape).
set -uo pipefail
out=${1:?output dir}; preset=${2:?preset}; cap=${3:?cap in GiB}
model=/tmp/families/$preset${LAYERS:+-$LAYERS}${QUANT:+-$QUANT}.gguf  # QUANT: synth's --quant, else its default
mkdir -p "$out" /tmp/families
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ ! -f "$model" ]; then
  python3 -m autotune.cli synth "$model" --preset "$preset" ${LAYERS:+--layers $LAYERS} \
    ${QUANT:+--quant $QUANT} --no-measure > "$out/synth.txt" 2>&1 || { tail -5 "$out/synth.txt"; exit 1; }
fi
python3 -m autotune.cli inspect "$model" > "$out/inspect.txt" 2>&1
timeout 240 python3 -m studies.runtime_full_residency.llama_logits "$model" /tmp/families/llama.npz 2>&1 \
  | tee "$out/llama_logits.txt"
timeout 150 llama-bench -m "$model" -p 512 -n 128 -r 3 -fa 1 -ngl 99 -o json \
  > "$out/llama_bench.json" 2> "$out/llama_bench.err"
timeout 240 python3 studies/runtime_full_residency/bench_runtime.py "$model" "$out" --reps 3 ${INT8:+--int8} \
  --llama /tmp/families/llama.npz > "$out/bench_runtime.txt" 2>&1
timeout 240 python3 -m studies.hybrid.exactness "$model" /tmp/families/llama.npz "$cap" "$out/exactness.json" \
  ${KNOBS:-} 2>&1 | tee "$out/exactness.txt"
python3 -m studies.families.summary "$out" | tee "$out/summary.txt"

#!/usr/bin/env bash
# Issue 28's per-quant-type bar: decode of a Qwen3-30B-A3B-shape file in each type >= 85% of
# llama.cpp all on the GPU, on the same file, in the same call.
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   bash studies/quant_types/run.sh OUT_DIR QUANT...     (synth's --quant names: q2_k q3_k ...)
# Per type: `autotune synth` writes the file (synthetic weights, the real shape), `llama-bench
# -p 512 -n 128 -r 3 -fa 1 -ngl 99` and bench_runtime.py (full residency, tg128 and pp512,
# 3 repetitions) measure it, and the file is deleted (the machine's disk holds one or two).
# studies/families/summary.py prints each type's decode ratio against the bar.
# BASE=DIR (a copy of an earlier commit's package: `git archive REV autotune | tar -x -C DIR`,
# carried untracked) also measures that version's runtime on the same file, into TYPE/base/:
# an A/B of kernel changes in one call. INT8=1 also decodes with the experts' gate+up on the
# 8-bit input (bench_runtime.py --int8), for the types that have that path (triton_int8).
set -uo pipefail
out=${1:?output dir}; shift
mkdir -p "$out" /tmp/quant_types
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
for quant in "$@"; do
  dir="$out/$quant"; model=/tmp/quant_types/q30-$quant.gguf
  mkdir -p "$dir"
  python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --quant "$quant" --no-measure > "$dir/synth.txt" 2>&1 \
    || { echo "$quant: synth failed"; tail -3 "$dir/synth.txt"; continue; }
  timeout 150 llama-bench -m "$model" -p 512 -n 128 -r 3 -fa 1 -ngl 99 -o json \
    > "$dir/llama_bench.json" 2> "$dir/llama_bench.err"
  timeout 240 python3 studies/runtime_full_residency/bench_runtime.py "$model" "$dir" --reps 3 ${INT8:+--int8} \
    > "$dir/bench_runtime.txt" 2>&1
  if [ -n "${BASE:-}" ]; then
    mkdir -p "$dir/base" && cp "$dir/llama_bench.json" "$dir/base/"
    PYTHONPATH="$BASE:$PYTHONPATH" timeout 240 python3 studies/runtime_full_residency/bench_runtime.py "$model" \
      "$dir/base" --reps 3 > "$dir/base/bench_runtime.txt" 2>&1
    echo -n "$quant, base: " | tee "$dir/base/summary.txt"
    python3 -m studies.families.summary "$dir/base" | head -1 | tee -a "$dir/base/summary.txt"
  fi
  rm -f "$model"
  python3 -m studies.families.summary "$dir" | head -1 | tee "$dir/summary.txt"
done

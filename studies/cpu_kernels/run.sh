#!/usr/bin/env bash
# Issue 27's CPU-kernel bar: ggml's CPU expert kernels read Q4_K/Q6_K weights at >= 70% of the
# host's measured RAM read bandwidth, at the best thread count. Each kernel figure cycles over a
# weight set of 4x the last-level cache (2 GiB at least), plain layout then CPU_REPACK layout.
# Usage (project root; the GPU machine's host for the figures): bash studies/cpu_kernels/run.sh OUT_DIR [THREADS]
set -euo pipefail
out=${1:?output dir}; threads=${2:-4,8,12,16}
mkdir -p "$out"
lscpu > "$out/lscpu.txt"
python3 -m autotune.studies.cpu_kernels --threads "$threads" --layout both --steps 100 --ram-gib 4 \
  --out "$out/cpu_kernels.json" 2>&1 | grep -v '^repack: repack tensor' | tee "$out/cpu_kernels.txt"

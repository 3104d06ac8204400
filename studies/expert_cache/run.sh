#!/usr/bin/env bash
# Issue 6's GPU figures for the expert cache (see README.md).
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   bash studies/expert_cache/run.sh OUT_DIR [MODEL_PATH] [extra bench_cache.py cache args]
# Writes the qwen3-30b-a3b preset if MODEL_PATH is missing, runs the cache's kernel tests
# compiled (SKIP_TESTS=1 skips them), llama.cpp's best configs at the caps and all-GPU
# (llama_side.py; SKIP_LLAMA=1 skips it, LLAMA_ARGS="--only NAME..." narrows it), then the
# full-residency reference (its greedy tokens, speed and routing counts, which seed the learned
# placement) and the cache settings at 16 and 12 GiB in one load.
set -uo pipefail
out=${1:?output dir}; model=${2:-/tmp/q.gguf}; shift $(( $# < 2 ? $# : 2 ))
here=studies/expert_cache
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
if [ ! -f "$model" ]; then
  # ROUTING: the synth routing mode; static by default, as every run so far was measured
  python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --routing "${ROUTING:-static}" --no-measure > "$out/synth.txt" 2>&1 || exit 1
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_expert_cache_triton.py > "$out/pytest.txt" 2>&1
  echo "pytest exit $?" | tee -a "$out/pytest.txt"; tail -3 "$out/pytest.txt"
fi
if [ -z "${SKIP_LLAMA:-}" ]; then
  timeout 170 python3 $here/llama_side.py "$model" "$out/llama.json" ${LLAMA_ARGS:-} 2>&1 | tee "$out/llama.txt"
fi
timeout 90 python3 $here/bench_cache.py reference "$model" "$out" 2>&1 | tee "$out/reference.txt" | grep -v "^\s*$" | tail -5
timeout ${CACHE_TIMEOUT:-330} python3 $here/bench_cache.py cache "$model" "$out" "$@" 2>&1 | tee "$out/cache.txt" | grep -v "^\s*$" | tail -40

#!/usr/bin/env bash
# Issue 4's GPU bar, one cap per call: the tuner (llama_cpp backend, 20 measured trials) on the
# qwen3-30b-a3b preset, then its winner and the grid's best measured side by side.
# Usage (GPU machine, project root): bash studies/tuner_vs_grid/run.sh OUT_DIR CAP_GIB [MODEL]
set -euo pipefail
out=${1:?out dir}; cap=${2:?cap in GiB}; model=${3:-/tmp/q.gguf}
mkdir -p "$out"
[ -f "$model" ] || python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --no-measure
url="sqlite:///$out/tuner.db"
python3 -m autotune.cli run "$model" --vram-cap "${cap}G" --backends llama_cpp --trials 20 --seed 0 \
  --prompt-tokens 64 --gen-tokens 64 --repetitions 2 --ctx 128 --trial-timeout 3m \
  --storage "$url" --study "tuner-${cap}G" 2>&1 | tee "$out/tuner-${cap}G.log"
python3 studies/tuner_vs_grid/side_by_side.py "$model" studies/tuner_vs_grid/data/grid.json "$url" \
  "$out/side-${cap}G.json" "$cap" 2>&1 | tee "$out/side-${cap}G.log"

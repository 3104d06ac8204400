#!/usr/bin/env bash
# Issue 6's skew-0 bar at one cap, in one GPU call: the tuner given both backends on the
# uniform-routing preset, then its winner against llama.cpp's best at the cap, side by side.
# Usage (GPU machine, project root): [REFS="21:512 21:256"] [ROUNDS=4] bash studies/skew0/run.sh OUT_DIR CAP_GIB [MODEL] [TUNER_TIME]
# REFS: llama.cpp's configs to measure the winner against, NCMOE:UBATCH (side_by_side.py).
set -euo pipefail
out=${1:?out dir}; cap=${2:?cap in GiB}; model=${3:-/tmp/s0.gguf}; budget=${4:-3m}
mkdir -p "$out"
if [ ! -f "$model" ]; then
  python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --routing static --skew 0 --no-measure | tee "$out/synth.txt"
fi
url="sqlite:///$out/tuner.db"
python3 -m autotune.cli run "$model" --vram-cap "${cap}G" --backends llama_bench,cache --trials 30 --time "$budget" \
  --gen-tokens 64 --repetitions 2 --trial-timeout 3m --remeasure --seed 0 --storage "$url" \
  --study "skew0-${cap}G" 2>&1 | tee "$out/tuner-${cap}G.txt"
python3 studies/skew0/side_by_side.py "$model" "$url" "$out/side-${cap}G.json" "$cap" --rounds "${ROUNDS:-4}" \
  --reference ${REFS:-21:512 21:256} \
  2>&1 | tee "$out/side-${cap}G.txt"

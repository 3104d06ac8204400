#!/usr/bin/env bash
# The served-speed study at one cap: `autotune run` in fresh user directories (it serves its
# finalists and picks by served speed), then its exported command beside llama-server over HTTP.
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   [STEP=tune|side|all] [ROUNDS=2] bash studies/served/run.sh OUT_DIR CAP_GIB [MODEL] [TUNER_TIME]
# STEP=tune runs the tuner only, STEP=side the side-by-side only (on the tuner's database in
# OUT_DIR's work dir, /tmp/served-CAP): the two fit one device call each.
# REFS (NAME=FLAGS;...): llama-server configs beside it; default: llama.cpp's best fitting
# --n-cpu-moe configs at 12 and 16 GiB (shared ANCHORS.md) and all on the GPU.
set -euo pipefail
out=${1:?out dir}; cap=${2:?cap in GiB}; model=${3:-/tmp/served/qwen3-30b-a3b.gguf}; budget=${4:-4m}
mkdir -p "$out" "$(dirname "$model")"
work=/tmp/served-$cap  # the study's own user directories: a fresh machine's
export AUTOTUNE_DATA_DIR=$work/data AUTOTUNE_TRIAL_STORE=$work/cache
url="sqlite:///$work/autotune.db"
if [ ! -f "$model" ]; then
  # ROUTING: the synth routing mode; static by default, as the figures so far were measured
  python3 -m autotune.cli synth "$model" --preset qwen3-30b-a3b --routing "${ROUTING:-static}" --no-measure | tee "$out/synth.txt"
fi
if [ "${STEP:-all}" != side ]; then
  rm -rf "$work"; mkdir -p "$work"
  python3 -m autotune.cli run "$model" --vram-cap "${cap}G" --time "$budget" --storage "$url" --seed 0 \
    --study "served-${cap}G" 2>&1 | tee "$out/run-${cap}G.txt"
  python3 -m autotune.cli best "$model" --vram-cap "${cap}G" --storage "$url" --json > "$out/best-${cap}G.json"
  cp "$work/autotune.db" "$out/tuner-${cap}G.db"
fi
[ "${STEP:-all}" = tune ] && exit 0
winner=$(python3 -m autotune.cli export "$model" --vram-cap "${cap}G" --storage "$url")
echo "$winner" > "$out/command-${cap}G.txt"
common="-ngl 999 -fa on -c 4096 -t 16 -np 1"
default_refs="all on the GPU=;--n-cpu-moe 10 -ub 256=--n-cpu-moe 10 -ub 256;--n-cpu-moe 21 -ub 256=--n-cpu-moe 21 -ub 256"
refs=()
IFS=';' read -ra specs <<< "${REFS:-$default_refs}"
for spec in "${specs[@]}"; do
  refs+=("${spec%%=*}=llama-server -m $model $common ${spec#*=}")
done
python3 studies/served/side_by_side.py "$model" "$out/side-${cap}G.json" "$cap" --winner "$winner" \
  --reference "${refs[@]}" --rounds "${ROUNDS:-2}" 2>&1 | tee "$out/side-${cap}G.txt"

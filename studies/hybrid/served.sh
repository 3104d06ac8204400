#!/usr/bin/env bash
# Issue 27's served bar: a hybrid-cache `autotune serve` command (the cache alone, not a tuner's
# pick) beside llama-server's fitting --n-cpu-moe configs, each started fresh and measured over
# HTTP by studies/served/side_by_side.py (decode (t(N)-t(1))/(N-1), prefill, peak VRAM).
# Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
#   [NCMOE="11 12"] [ROUNDS=2] [REPS=3] bash studies/hybrid/served.sh OUT_DIR MODEL CAP_GIB [SERVE OPTIONS ...]
# NCMOE: llama-server's --n-cpu-moe values; N:UB also sets its ubatch (-ub UB), which lets a
# split with fewer CPU layers fit a cap (studies/skew0). REPS: requests of each length per start.
# VARIANTS="NAME=OPTIONS;...": more cache commands (the winner's knobs, then OPTIONS) measured as
# references in the same rotating rounds, e.g. VARIANTS="repack=--cpu-repack": an A/B in one process.
# SERVE OPTIONS: the cache's knobs (default: LFU every 4 tokens, decay 0.8, misses computed on the CPU,
# the prefill's room lent to slots between prefills).
set -euo pipefail
out=${1:?out dir}; model=${2:?model}; cap=${3:?cap in GiB}; shift 3
knobs=("$@"); [ ${#knobs[@]} -eq 0 ] && knobs=(--eviction lfu_decay --rebalance-interval 4 --decay 0.8 --miss-mode cpu --lend-prefill-room)
mkdir -p "$out"
winner="autotune serve $model --vram-cap ${cap}G --ctx 4096 ${knobs[*]}"
refs=()
for n in ${NCMOE:-11 12}; do
  ub=${n#*:}; [ "$ub" = "$n" ] && ub="" || ub=" -ub $ub"
  refs+=("ncmoe${n/:/_ub}=llama-server -m $model -ngl 999 -fa on -c 4096 -t 16 -np 1 --n-cpu-moe ${n%%:*}$ub")
done
IFS=';' read -r -a variants <<< "${VARIANTS:-}"
for variant in "${variants[@]}"; do
  refs+=("${variant%%=*}=$winner ${variant#*=}")
done
echo "$winner" > "$out/command-${cap}G.txt"
python3 studies/served/side_by_side.py "$model" "$out/side-${cap}G.json" "$cap" --winner "$winner" \
  --reference "${refs[@]}" --rounds "${ROUNDS:-2}" --repetitions "${REPS:-3}" 2>&1 | tee "$out/side-${cap}G.txt"

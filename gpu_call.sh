#!/bin/bash
# One device call: optional setup measurements, then the caps study into $OUT/results (returned as r.tgz).
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
M=/tmp/models; mkdir -p $M
MODEL=$M/qwen3-30b-a3b-q4_k_m-skew0-seed0.gguf
if [ -n "$PROFILE" ]; then
  python3 -m autotune.cli synth $MODEL --preset qwen3-30b-a3b --quant q4_k_m --skew 0 --seed 0 --no-measure 2>&1 | tail -2
  for i in 1 2; do t0=$(date +%s); NOPROF=1 python3 studies/expert_cache/trial_setup/profile_setup.py $MODEL 2>&1 | tail -3; echo "child wall $(( $(date +%s) - t0 )) s"; done | tee $OUT/setup_times.txt
  timeout 150 python3 studies/expert_cache/copy_interference.py $OUT/copy.json > $OUT/copy.txt 2>&1; tail -30 $OUT/copy.txt
fi
mkdir -p $OUT/results && cp -r studies/qwen3_30b_caps/results/. $OUT/results/
rm -rf studies/qwen3_30b_caps/results && ln -s $OUT/results studies/qwen3_30b_caps/results
LEFT=$(( ${CALL_BUDGET:-580} - SECONDS ))  # seconds left of this call; a tuner part may run ~2 min past --time
echo "study: ${LEFT}s left, --time $(( LEFT - 130 ))s"
timeout $LEFT python3 -m autotune.cli study run studies/qwen3_30b_caps --models $M --time $(( LEFT - 130 ))s > $OUT/study.txt 2>&1
tail -25 $OUT/study.txt
cd $OUT && tar czf r.tgz results && rm -rf results

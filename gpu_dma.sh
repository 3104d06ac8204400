#!/bin/bash
# Session helper (never committed): DMA prefetch on the GPU, 12 GiB first.
RUN=${RUN:-run12}; R=$OUT/$RUN; mkdir -p $R
[ -f /tmp/q.gguf ] || python3 -m autotune.cli synth /tmp/q.gguf --preset qwen3-30b-a3b --no-measure > $R/synth.txt 2>&1
echo "synth done at ${SECONDS}s"
if [ -z "$SKIP_TESTS" ]; then
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/test_expert_cache_triton.py tests/test_dma_prefetch.py ${PYTEST_K:+-k "$PYTEST_K"} > $R/pytest.txt 2>&1
echo "pytest exit $? at ${SECONDS}s" | tee -a $R/pytest.txt; grep -E "passed|failed|Error|assert" $R/pytest.txt | tail -15
fi
[ -n "$DIAG" ] && { for ch in 2048 512; do timeout 80 python3 studies/expert_cache/lend_memory.py /tmp/q.gguf $R/lend_memory_$ch.json --chunk $ch > $R/lend_memory_$ch.txt 2>&1; echo "diag $ch exit $? at ${SECONDS}s"; tail -30 $R/lend_memory_$ch.txt; done; [ -n "$DIAG_ONLY" ] && exit 0; }
LEFT=$(( ${CALL_BUDGET:-585} - SECONDS ))
L=${SKIP_LLAMA-1}; [ -z "$L" ] && LEFT=$(( LEFT - 175 ))
SKIP_TESTS=1 SKIP_LLAMA=$L CACHE_TIMEOUT=$(( LEFT - 100 )) bash studies/expert_cache/run.sh $R /tmp/q.gguf "$@"
echo "end at ${SECONDS}s"
cd $OUT && tar czf ${RUN}_extra.tgz $RUN/timeline_*.json.gz $RUN/settings $RUN/synth.txt 2>/dev/null; rm -rf $RUN/timeline_*.json.gz $RUN/settings $RUN/data

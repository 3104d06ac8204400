"""Decode launch shapes at full residency: tg128 per (CHUNK_ROUNDS, DOWN_ROWS, GATE_UP_WARPS).

Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
  python3 studies/expert_cache/launch_shapes.py MODEL.gguf

One load; for each shape a new decode graph, then 4 runs of 128 tokens from an empty KV cache
(the first one warms up); prints the median of the other 3. The current shape runs first and
last, so drift between them shows.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from autotune.cache_runtime import triton_ops
from autotune.cache_runtime.engine import Engine

SHAPES = [(2, 1, 8), (1, 2, 8), (2, 2, 8), (2, 1, 4), (1, 1, 8)]


def tg128(engine: Engine) -> float:
    engine._graphs.clear()  # a new shape needs a new capture
    speeds = []
    for _ in range(4):
        engine.reset()
        engine.decode(1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(127):
            engine.decode()
        torch.cuda.synchronize()
        speeds.append(127 / (time.perf_counter() - start))
    return statistics.median(speeds[1:])


def main() -> None:
    engine = Engine(sys.argv[1])
    current = (triton_ops.CHUNK_ROUNDS, triton_ops.DOWN_ROWS, triton_ops.GATE_UP_WARPS)
    for shape in [current, *SHAPES, current]:
        triton_ops.CHUNK_ROUNDS, triton_ops.DOWN_ROWS, triton_ops.GATE_UP_WARPS = shape
        print("CHUNK_ROUNDS, DOWN_ROWS, GATE_UP_WARPS", shape, f"tg {tg128(engine):.1f}", flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()

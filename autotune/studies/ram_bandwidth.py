"""The host's memory, as the CPU kernel benchmark needs it: the last-level cache's size (a
weight set must be far larger to measure RAM, not cache) and the RAM read bandwidth.

The read bandwidth is the best of four maintained readers over one buffer far larger than the
cache, each on ``n`` threads: torch summing it as float32 and as int64 (torch's own thread
pool), and numpy or-reducing it as uint64 and taking its float32 maximum, one slice per
thread of a pool of ``n`` Python threads (numpy releases the GIL while it reduces). Which
reader does best varies by CPU (on a 2-core AMD EPYC VM, numpy's at 2 threads, torch's int64
sum at 1, by up to 1.6x), so the benchmark reports each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from autotune.errors import AutotuneError

CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
SIZE_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def last_level_cache_bytes(caches: Path = CPU_CACHES) -> int:
    """The size of cpu0's highest-level cache (the kernel's ``index*/level`` and ``size``)."""
    levels = []
    for index in caches.glob("index*"):
        size = (index / "size").read_text().strip()
        nbytes = int(size[:-1]) * SIZE_UNITS[size[-1]] if size[-1] in SIZE_UNITS else int(size)
        levels.append((int((index / "level").read_text()), nbytes))
    if not levels:
        raise AutotuneError(f"no CPU cache sizes under {caches}: pass the weight set's size instead")
    return max(levels)[1]


def _median_rate(read: Callable[[], object], nbytes: int, repeats: int) -> float:
    read()  # warm-up: the thread team, the pages' first touch
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        seconds.append(time.perf_counter() - start)
    return nbytes / statistics.median(seconds)


def ram_read_bandwidth(n_threads: int, nbytes: int = 2**31, repeats: int = 7) -> dict[str, float]:
    """Bytes per second each reader reads ``nbytes`` on ``n_threads`` threads (the median of
    ``repeats``), by reader name."""
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    buffer = torch.ones(nbytes // 8 * 2, dtype=torch.float32)  # ones: no subnormal slows a float reader
    u64_slices = np.array_split(buffer.numpy().view(np.uint64), n_threads)
    f32_slices = np.array_split(buffer.numpy(), n_threads)
    try:
        with ThreadPoolExecutor(n_threads) as pool:
            readers: dict[str, Callable[[], object]] = {
                "torch_f32_sum": buffer.sum,
                "torch_i64_sum": buffer.view(torch.int64).sum,
                "numpy_u64_or": lambda: list(pool.map(np.bitwise_or.reduce, u64_slices)),
                "numpy_f32_max": lambda: list(pool.map(np.max, f32_slices)),
            }
            return {name: _median_rate(read, nbytes, repeats) for name, read in readers.items()}
    finally:
        torch.set_num_threads(before)

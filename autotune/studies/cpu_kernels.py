"""Micro-benchmark: the host's RAM read bandwidth, and how fast the CPU expert kernels read weights.

Issue 27's bar: ggml's CPU kernels (``cache_runtime.cpu_experts``) read Q4_K and Q6_K expert
weights at 70% or more of the host's measured RAM read bandwidth, at the best thread count.

- RAM read bandwidth: torch sums a float32 buffer far larger than the last-level cache on
  ``n`` threads; bytes over the median time of the repeats.
- Kernel read rate: one layer's stacks of random quantized experts of a preset's shape, all
  of one type; each step computes one token's ``n_expert_used`` distinct random experts,
  as decode does; the bytes of those experts over the median step time (the whole
  ``CpuExperts.forward``, its few microseconds of torch bookkeeping included).

Usage: ``python -m autotune.studies.cpu_kernels --threads 4,8,16 [--out figures.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType

from autotune.cache_runtime.cpu_experts import CpuExperts
from autotune.cache_runtime.dequant import row_bytes
from autotune.cache_runtime.ggml_cpu import CpuBackend
from autotune.cache_runtime.weights import QTensor
from autotune.quants import quantize
from autotune.synth.presets import get_preset

POOL_VALUES = 2**20  # random values a stack's blocks repeat
GB = 1e9


def ram_read_bandwidth(n_threads: int, nbytes: int = 2**31, repeats: int = 7) -> float:
    """Bytes per second torch reads summing ``nbytes`` of float32 on ``n_threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        buffer = torch.ones(nbytes // 4, dtype=torch.float32)
        buffer.sum()  # first touch and warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            buffer.sum()
            seconds.append(time.perf_counter() - start)
        return nbytes / statistics.median(seconds)
    finally:
        torch.set_num_threads(before)


def random_stack(n_expert: int, rows: int, cols: int, qtype: str, seed: int = 0) -> QTensor:
    """A ``(n_expert, rows, cols)`` stack of random, well-formed ``qtype`` blocks in host memory
    (a pool of blocks repeated: what is read, not what it holds, sets the speed)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(POOL_VALUES, dtype=np.float32) / 64
    pool = torch.from_numpy(quantize(values, QType[qtype]).reshape(-1))
    per_row = row_bytes(qtype, cols)
    total = n_expert * rows * per_row
    data = pool.repeat(-(-total // pool.numel()))[:total]
    return QTensor(data.view(n_expert, rows, per_row), qtype, cols)


@dataclass
class KernelRate:
    preset: str
    qtype: str
    n_threads: int
    n_expert: int  # experts in the benchmark's stacks
    experts_per_step: int
    expert_bytes: int
    step_seconds: float  # median
    best_step_seconds: float  # the fastest step: the kernels undisturbed by other processes
    bytes_per_second: float  # at the median step


def kernel_read_rate(preset_name: str, qtype: str, n_threads: int, n_expert: int | None = None,
                     steps: int = 40, seed: int = 0) -> KernelRate:
    """The CPU experts' weight read rate on one decode token of the preset's layer shape."""
    preset = get_preset(preset_name)
    n_expert = n_expert or preset.n_expert
    k = min(preset.n_expert_used, n_expert)
    gate = random_stack(n_expert, preset.n_ff_expert, preset.n_embd, qtype, seed)
    up = random_stack(n_expert, preset.n_ff_expert, preset.n_embd, qtype, seed + 1)
    down = random_stack(n_expert, preset.n_embd, preset.n_ff_expert, qtype, seed + 2)
    backend = CpuBackend(n_threads)
    experts = CpuExperts(gate, up, down, backend)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, preset.n_embd, generator=gen)
    weights = torch.full((1, k), 1.0 / k)
    seconds = []
    try:
        for step in range(steps + 3):  # three warm-up steps: the graph, the thread team
            ids = torch.randperm(n_expert, generator=gen)[:k][None]
            start = time.perf_counter()
            experts.forward(x, ids, weights)
            if step >= 3:
                seconds.append(time.perf_counter() - start)
    finally:
        experts.close()
        backend.close()
    step_seconds = statistics.median(seconds)
    return KernelRate(preset_name, qtype, n_threads, n_expert, k, experts.expert_bytes, step_seconds,
                      min(seconds), k * experts.expert_bytes / step_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--presets", default="qwen3-30b-a3b,qwen3-235b-a22b")
    parser.add_argument("--types", default="Q4_K,Q6_K")
    parser.add_argument("--experts", type=int, default=None,
                        help="experts per stack (default: the preset's; fewer saves memory)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ram-gib", type=float, default=2.0, help="buffer the RAM bandwidth sums")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]

    ram = {t: ram_read_bandwidth(t, int(args.ram_gib * 2**30)) for t in threads}
    best_ram = max(ram.values())
    for t, rate in ram.items():
        print(f"RAM read, {t:>3} threads: {rate / GB:6.1f} GB/s")
    rates = [kernel_read_rate(p, q, t, args.experts, args.steps)
             for p in args.presets.split(",") for q in args.types.split(",") for t in threads]
    for r in rates:
        best = r.bytes_per_second * r.step_seconds / r.best_step_seconds
        print(f"{r.preset:>16} {r.qtype:>5} {r.n_threads:>3} threads: {r.step_seconds * 1e3:7.2f} ms/token, "
              f"{r.bytes_per_second / GB:6.1f} GB/s = {r.bytes_per_second / best_ram:5.1%} of RAM "
              f"(fastest step {best / GB:.1f} GB/s)")
    if args.out:
        args.out.write_text(json.dumps({"ram_read_bytes_per_second": ram,
                                        "kernels": [asdict(r) for r in rates]}, indent=1))


if __name__ == "__main__":
    main()

"""Micro-benchmark: the host's RAM read bandwidth, and how fast the CPU expert kernels read weights.

Issue 27's bar: ggml's CPU kernels (``cache_runtime.cpu_experts``) read Q4_K and Q6_K expert
weights at 70% or more of the host's measured RAM read bandwidth, at the best thread count.

- RAM read bandwidth: ``ram_bandwidth.ram_read_bandwidth``, the best reader at each thread count.
- Kernel read rate: as many layers of a preset's shape (random quantized experts, all of one
  type) as make a weight set far larger than the last-level cache (4x it, and 2 GiB at
  least), so the weights come from RAM as in decode. Each step is one layer's experts for
  one decode token (``n_expert_used`` distinct experts, or ``per_step``: the few a layer
  misses in the hybrid cache, through ``CpuExperts.forward_token``, the hybrid's own path, its
  bookkeeping included); with ``gap_s`` the host idles that long between steps, as it does
  while the GPU computes a layer's attention. The steps visit the layers in turn and
  each layer's experts in a fixed shuffled cycle, so no expert is read twice before the
  whole set has been. The rate is the bytes of a step's experts over the median step time.

Usage: ``python -m autotune.studies.cpu_kernels --threads 4,8,16 [--out figures.json]``
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType

from autotune.cache_runtime.cpu_experts import CpuExperts
from autotune.cache_runtime.dequant import row_bytes
from autotune.cache_runtime.ggml_cpu import CpuBackend, cpu_features
from autotune.cache_runtime.host_memory import hugepage_bytes
from autotune.cache_runtime.weights import QTensor
from autotune.quants import quantize
from autotune.studies.ram_bandwidth import last_level_cache_bytes, ram_read_bandwidth
from autotune.synth.presets import get_preset

POOL_VALUES = 2**20  # random values a stack's blocks repeat
MIN_WEIGHT_BYTES = 2**31
LLC_MULTIPLE = 4
GB = 1e9
GIB = 2**30


@functools.cache
def _block_pool(qtype: str, seed: int) -> torch.Tensor:
    values = np.random.default_rng(seed).standard_normal(POOL_VALUES, dtype=np.float32) / 64
    return torch.from_numpy(quantize(values, QType[qtype]).reshape(-1))


def random_stack(n_expert: int, rows: int, cols: int, qtype: str, seed: int = 0,
                 hugepages: bool = False) -> QTensor:
    """A ``(n_expert, rows, cols)`` stack of random, well-formed ``qtype`` blocks in host memory
    of its own (a pool of blocks repeated: what is read, not what it holds, sets the speed);
    ``hugepages``: memory madvised for transparent huge pages."""
    pool = _block_pool(qtype, seed)
    per_row = row_bytes(qtype, cols)
    total = n_expert * rows * per_row
    data = pool.repeat(-(-total // pool.numel()))[:total]
    if hugepages:
        data = hugepage_bytes(total).copy_(data)
    return QTensor(data.view(n_expert, rows, per_row), qtype, cols)


def expert_schedule(n_layers: int, n_expert: int, k: int, seed: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless (layer, ``k`` distinct expert ids) steps: the layers in turn, each walking its
    own shuffled cycle of experts, so an expert comes back only after all the others have."""
    gen = torch.Generator().manual_seed(seed)
    cycles = [torch.randperm(n_expert, generator=gen) for _ in range(n_layers)]
    visit = 0
    while True:
        for layer, cycle in enumerate(cycles):
            yield layer, cycle[(visit * k + torch.arange(k)) % n_expert]
        visit += 1


@dataclass
class KernelRate:
    preset: str
    qtype: str
    n_threads: int
    repack: bool
    repacked: list[str]  # the stacks the CPU_REPACK layout covered (the others read in place)
    hugepages: bool  # the weight set in memory madvised for transparent huge pages
    n_expert: int  # experts in each layer's stacks
    n_layers: int  # layers in the weight set
    weight_bytes: int  # the weight set the steps cycle over
    experts_per_step: int
    gap_seconds: float  # the host's idle time between steps
    expert_bytes: int
    step_seconds: float  # median wall time of a step: one layer's experts for one token
    best_step_seconds: float  # the fastest step: the kernels undisturbed by other processes
    step_cpu_seconds: float  # median process CPU time of a step (all threads, spinning included)
    bytes_per_second: float  # at the median step


def _layer(preset_name: str, qtype: str, n_expert: int, backend: CpuBackend, repack: bool, seed: int,
           hugepages: bool) -> CpuExperts:
    preset = get_preset(preset_name)
    stacks = (random_stack(n_expert, preset.n_ff_expert, preset.n_embd, qtype, seed, hugepages),
              random_stack(n_expert, preset.n_ff_expert, preset.n_embd, qtype, seed + 1, hugepages),
              random_stack(n_expert, preset.n_embd, preset.n_ff_expert, qtype, seed + 2, hugepages))
    return CpuExperts(*stacks, backend, repack=repack)  # a repacked stack's source goes with this frame


def kernel_read_rate(preset_name: str, qtype: str, n_threads: int, repack: bool = False,
                     weight_bytes: int = MIN_WEIGHT_BYTES, n_expert: int | None = None,
                     steps: int = 40, seed: int = 0, per_step: int | None = None,
                     gap_s: float = 0.0, hugepages: bool = False) -> KernelRate:
    """The CPU experts' weight read rate on decode steps of the preset's layer shape, over a
    weight set of at least ``weight_bytes`` (``hugepages``: in memory madvised for them)."""
    preset = get_preset(preset_name)
    n_expert = n_expert or preset.n_expert
    k = min(per_step or preset.n_expert_used, n_expert)
    backend = CpuBackend(n_threads)
    layers = [_layer(preset_name, qtype, n_expert, backend, repack, seed, hugepages)]
    layer_bytes = n_expert * layers[0].expert_bytes
    layers += [_layer(preset_name, qtype, n_expert, backend, repack, seed, hugepages)
               for _ in range(1, -(-weight_bytes // layer_bytes))]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(preset.n_embd, generator=gen).numpy()
    weights = np.full(k, 1.0 / k, dtype=np.float32)
    schedule = expert_schedule(len(layers), n_expert, k, seed)
    wall, cpu = [], []
    try:
        for step in range(len(layers) + steps):  # a first visit of each layer builds its graph
            layer, ids = next(schedule)
            if gap_s:
                time.sleep(gap_s)
            start, start_cpu = time.perf_counter(), time.process_time()
            layers[layer].forward_token(x, ids.numpy(), weights)
            if step >= len(layers):
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    finally:
        for experts in layers:
            experts.close()
        backend.close()
    step_seconds = statistics.median(wall)
    first = layers[0]
    return KernelRate(preset_name, qtype, n_threads, repack, list(first.repacked), hugepages, n_expert, len(layers),
                      len(layers) * layer_bytes, k, gap_s, first.expert_bytes, step_seconds, min(wall),
                      statistics.median(cpu), k * first.expert_bytes / step_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--presets", default="qwen3-30b-a3b,qwen3-235b-a22b")
    parser.add_argument("--types", default="Q4_K,Q6_K")
    parser.add_argument("--layout", choices=("plain", "repack", "both"), default="both",
                        help="the stacks read in place, in ggml-cpu's CPU_REPACK layout, or each in turn")
    parser.add_argument("--experts", type=int, default=None,
                        help="experts per stack (default: the preset's)")
    parser.add_argument("--weights-gib", type=float, default=None,
                        help=f"weight set the steps cycle over (default: {LLC_MULTIPLE}x the last-level "
                             f"cache, {MIN_WEIGHT_BYTES / GIB:.0f} GiB at least)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-step", default="",
                        help="comma-separated experts per step (default: the preset's experts per token)")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="the host's idle time between steps (the GPU's share of a layer)")
    parser.add_argument("--ram-gib", type=float, default=2.0, help="buffer the RAM readers read")
    parser.add_argument("--hugepages", choices=("off", "on", "both"), default="off",
                        help="the weight sets in memory madvised for transparent huge pages")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    layouts = {"plain": [False], "repack": [True], "both": [False, True]}[args.layout]
    per_steps = [int(n) for n in args.per_step.split(",")] if args.per_step else [None]
    hugepages = {"off": [False], "on": [True], "both": [False, True]}[args.hugepages]
    llc = last_level_cache_bytes()
    weight_bytes = int(args.weights_gib * GIB) if args.weights_gib else max(LLC_MULTIPLE * llc, MIN_WEIGHT_BYTES)

    print(f"ggml CPU features: {' '.join(sorted(cpu_features()))}")
    print(f"last-level cache {llc / 2**20:.0f} MiB; weight set {weight_bytes / GIB:.2f} GiB or more")
    ram = {t: ram_read_bandwidth(t, int(args.ram_gib * GIB)) for t in threads}
    best_ram = max(max(readers.values()) for readers in ram.values())
    for t, readers in ram.items():
        print(f"RAM read, {t:>3} threads: " + ", ".join(f"{name} {rate / GB:6.1f} GB/s"
                                                        for name, rate in readers.items()))
    rates = []
    for preset in args.presets.split(","):
        for qtype in args.types.split(","):
            for repack, huge, t, per_step in itertools.product(layouts, hugepages, threads, per_steps):
                r = kernel_read_rate(preset, qtype, t, repack, weight_bytes, args.experts, args.steps,
                                     per_step=per_step, gap_s=args.gap_ms / 1e3, hugepages=huge)
                rates.append(r)
                layout = f"repack({','.join(r.repacked) or 'none'})" if repack else "plain"
                layout += "+huge" if huge else ""
                best = r.bytes_per_second * r.step_seconds / r.best_step_seconds
                print(f"{preset:>16} {qtype:>5} {layout:>20} {t:>3} threads, {r.experts_per_step} experts: "
                      f"{r.step_seconds * 1e3:7.3f} ms/step (x{get_preset(preset).n_layers} layers = "
                      f"{r.step_seconds * get_preset(preset).n_layers * 1e3:6.1f} ms/token), "
                      f"cpu {r.step_cpu_seconds * 1e3:7.3f} ms/step, {r.bytes_per_second / GB:6.1f} GB/s = "
                      f"{r.bytes_per_second / best_ram:5.1%} of RAM (fastest step {best / GB:.1f} GB/s; "
                      f"{r.n_layers} layers, {r.weight_bytes / GIB:.2f} GiB)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"last_level_cache_bytes": llc, "ram_read_bytes_per_second": ram,
                                        "kernels": [asdict(r) for r in rates]}, indent=1))


if __name__ == "__main__":
    main()

"""Per decode token, what each channel moves and the least time it takes (issue 27, part 4).

A decode token reads weights over three channels: the GPU's memory (the non-expert weights,
the experts it finds in VRAM), PCIe (experts read or copied from pinned host memory), and the
host's RAM (experts the CPU computes). ``measure_bandwidths`` measures the three on this
machine; ``token_bound`` turns an expert cache's statistics into bytes per token per channel,
the time each takes at its bandwidth, and the achieved fraction of the bound: the channels
overlapped (the largest time) and serial (their sum), against the measured time per token.
The KV cache and activations are left out (small at short contexts), so the bound is a floor.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from autotune.studies.ram_bandwidth import ram_read_bandwidth

GIB = 2**30


@dataclass(frozen=True)
class Bandwidths:
    """Bytes per second: the GPU reading its memory, pinned host to GPU, the CPU reading RAM."""

    vram: float
    pcie: float
    ram: float


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure_bandwidths(cpu_threads: int, nbytes: int = GIB, repeats: int = 5) -> Bandwidths:
    """This machine's three bandwidths (CUDA): a float32 sum over ``nbytes`` of VRAM, a copy of
    ``nbytes`` from pinned host memory, and the best RAM reader on ``cpu_threads`` threads."""
    on_gpu = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    vram = nbytes / _median_seconds(on_gpu.sum, repeats)
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    pcie = nbytes / _median_seconds(lambda: target.copy_(pinned, non_blocking=True), repeats)
    del on_gpu, pinned, target
    torch.cuda.empty_cache()
    ram = max(ram_read_bandwidth(cpu_threads, 2 * nbytes, repeats).values())
    return Bandwidths(vram, pcie, ram)


def token_bound(stats: dict, expert_bytes: int, dense_bytes: int, seconds_per_token: float,
                bandwidths: Bandwidths) -> dict:
    """``stats``: ``Engine.cache_stats()`` over decode; ``expert_bytes``: one expert's weights;
    ``dense_bytes``: the non-expert weights a token reads (all but the embedding table)."""
    tokens = max(stats["tokens"], 1)
    selections = stats["tokens"] * len(stats["slots_per_layer"]) * stats["top_k"]
    from_vram = (selections - stats["misses"] + stats["served_by_prefetch"]) * expert_bytes
    bytes_per_token = {"vram": dense_bytes + from_vram / tokens, "pcie": stats["pcie_bytes_per_token"],
                       "ram": stats["ram_bytes_per_token"]}
    rate = asdict(bandwidths)
    seconds = {channel: n / rate[channel] for channel, n in bytes_per_token.items()}
    overlapped, serial = max(seconds.values()), sum(seconds.values())
    return {
        "bytes_per_token": {k: round(v) for k, v in bytes_per_token.items()},
        "bandwidths_gb_s": {k: round(v / 1e9, 1) for k, v in rate.items()},
        "bound_ms": {k: round(v * 1e3, 3) for k, v in seconds.items()},
        "measured_ms": round(seconds_per_token * 1e3, 3),
        "of_overlapped_bound": round(overlapped / seconds_per_token, 3),
        "of_serial_bound": round(serial / seconds_per_token, 3),
    }


"""How much do host-to-device copies slow the compute beside them: SM copy programs (as the
prefetcher's stage copy, by program count) against the DMA engines (``copy_`` on a side stream).

Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
  python3 studies/expert_cache/copy_interference/copy_interference.py [OUT.json]

The compute is a chain of fp16 GEMVs over a 1 GiB matrix in VRAM (memory-bound, as decode's
kernels are); the copy moves 512 MiB from pinned host memory into VRAM, the SM way reading the
host through its address as the runtime's kernels do. Each is timed alone, then both at once
on two streams; each figure is the median of 5 runs. A copy that does not slow the GEMVs
leaves "gemv slowdown" near 1.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Callable

import torch
import triton
import triton.language as tl

COPY_BYTES = 512 * 2**20
GEMV_ROWS, GEMV_COLS, GEMV_REPS = 8192, 65536, 40  # 1 GiB of fp16 read 40 times
WORDS = 1024  # int32 words per load, as the prefetcher's COPY_WORDS
PROGRAM_COUNTS = (24, 96, 384, 1536)  # the prefetcher launches 8 experts x 3 matrices x 16 = 384
RUNS = 5


@triton.jit
def host_copy_kernel(src_addr, dst_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Copy n int32 words from a host address into dst; each program copies one contiguous part."""
    src = src_addr.to(tl.pointer_type(tl.int32))
    start = tl.program_id(0) * BLOCK * ITERS
    for i in range(ITERS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        tl.store(dst_ptr + offs, tl.load(src + offs, mask=ok), mask=ok)


def timed(stream: torch.cuda.Stream, work: Callable[[], None]) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        start.record()
        work()
        end.record()
    return start, end


def median_ms(pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> float:
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def main() -> None:
    device = torch.device("cuda")
    matrix = torch.randn(GEMV_ROWS, GEMV_COLS, device=device, dtype=torch.float16)
    vector = torch.randn(GEMV_COLS, device=device, dtype=torch.float16)
    out = torch.empty(GEMV_ROWS, device=device, dtype=torch.float16)
    host = torch.randint(0, 2**31 - 1, (COPY_BYTES // 4,), dtype=torch.int32).pin_memory()
    dst = torch.empty_like(host, device=device)
    n = host.numel()
    compute, side = torch.cuda.Stream(), torch.cuda.Stream()

    def gemvs() -> None:
        for _ in range(GEMV_REPS):
            torch.mv(matrix, vector, out=out)

    def sm_copy(programs: int) -> Callable[[], None]:
        iters = triton.cdiv(n, WORDS * programs)
        return lambda: host_copy_kernel[(programs,)](host.data_ptr(), dst, n, BLOCK=WORDS, ITERS=iters, num_warps=4)

    def dma_copy() -> None:
        dst.copy_(host, non_blocking=True)

    copies = {f"sm {p} programs": sm_copy(p) for p in PROGRAM_COUNTS} | {"dma (copy engine)": dma_copy}
    for work in [gemvs, *copies.values()]:  # compile and warm up
        timed(compute, work)
    torch.cuda.synchronize()
    dst.zero_()
    copies["sm 384 programs"]()
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), host), "the SM copy from the host address is wrong"

    gemv_alone = median_ms([timed(compute, gemvs) for _ in range(RUNS)])
    rows = {"gemv alone ms": gemv_alone, "gemv GB/s": GEMV_REPS * matrix.nbytes / gemv_alone / 1e6}
    print(f"GEMVs alone: {gemv_alone:.2f} ms ({rows['gemv GB/s']:.0f} GB/s)")
    for name, copy in copies.items():
        copy_alone = median_ms([timed(side, copy) for _ in range(RUNS)])
        together = []
        for _ in range(RUNS):
            torch.cuda.synchronize()
            together.append((timed(side, copy), timed(compute, gemvs)))
        copy_with = median_ms([c for c, _ in together])
        gemv_with = median_ms([g for _, g in together])
        rows[name] = {"copy alone GB/s": COPY_BYTES / copy_alone / 1e6, "copy beside GB/s": COPY_BYTES / copy_with / 1e6,
                      "gemv beside ms": gemv_with, "gemv slowdown": gemv_with / gemv_alone}
        r = rows[name]
        print(f"{name:18s} copy {r['copy alone GB/s']:5.1f} GB/s alone, {r['copy beside GB/s']:5.1f} beside the GEMVs; "
              f"GEMVs {gemv_with:.2f} ms beside it ({r['gemv slowdown']:.2f}x)")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), **rows}, handle, indent=1)


if __name__ == "__main__":
    main()

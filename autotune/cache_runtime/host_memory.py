"""The experts' home in host memory: pinned, so the GPU's kernels and copies read them in place.

torch's pinned-memory allocator rounds every allocation up to a power of two. One allocation per
expert tensor would pin 37% more than Qwen3-30B-A3B's experts hold (a layer's 113 MB gate and up
stacks take 128 MiB each, its 165 MB down stack 256 MiB). So the tensors are packed one after
another into a few arenas of ``ARENA_BYTES`` (a power of two), which wastes only the tail of
each arena and the rounding of the last: 2.8% for that model (19.3 GB pinned, not 25.8).
"""

from __future__ import annotations

import mmap
from typing import Callable

import torch

ARENA_BYTES = 2**31
ALIGN_BYTES = 4096  # where each tensor starts in its arena: a page, more than any kernel's vector loads need
PIN_THREADS = 8


def pin_with_threads() -> None:
    """Pin host memory by registering its pages from several threads (a torch allocator option)
    rather than by cudaHostAlloc's one: pinning the experts is most of a large model's load."""
    torch._C._accelerator_setAllocatorSettings(
        f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{PIN_THREADS}")


def pinned_bytes(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def hugepage_bytes(nbytes: int) -> torch.Tensor:
    """``nbytes`` of anonymous memory that the kernel is asked to back with transparent huge
    pages (``madvise``: fewer TLB misses where the CPU streams through expert weights). The
    tensor keeps its mapping alive."""
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    tensor = torch.frombuffer(region, dtype=torch.uint8)
    tensor.mapping = region
    return tensor


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def arena_layout(sizes: list[int], arena_bytes: int = ARENA_BYTES) -> list[list[tuple[int, int]]]:
    """Per arena, ``(index into sizes, byte offset)`` of what it holds, in order: each size goes
    into the current arena where it fits after the last one (aligned), else starts a new arena
    (which a size larger than ``arena_bytes`` has to itself)."""
    arenas: list[list[tuple[int, int]]] = []
    end = 0
    for index, size in enumerate(sizes):
        offset = -(-end // ALIGN_BYTES) * ALIGN_BYTES
        if not arenas or offset + size > arena_bytes:
            arenas.append([])
            offset = 0
        arenas[-1].append((index, offset))
        end = offset + size
    return arenas


def copy_into_arenas(tensors: list[torch.Tensor], allocate: Callable[[int], torch.Tensor] = pinned_bytes,
                     arena_bytes: int = ARENA_BYTES) -> list[torch.Tensor]:
    """Copies of ``tensors`` (contiguous), in order, as views of buffers from ``allocate(nbytes)``
    (uint8) laid out by ``arena_layout``."""
    copies: list[torch.Tensor | None] = [None] * len(tensors)
    for placed in arena_layout([_nbytes(t) for t in tensors], arena_bytes):
        last, last_offset = placed[-1]
        # the allocator's base may be only 16-byte aligned (malloc, then cudaHostRegister):
        # start the arena at the first aligned byte, as the CPU kernels need (cpu_experts)
        buffer = allocate(last_offset + _nbytes(tensors[last]) + ALIGN_BYTES)
        base = -buffer.data_ptr() % ALIGN_BYTES
        for index, offset in placed:
            source = tensors[index]
            start = base + offset
            view = buffer[start : start + _nbytes(source)].view(source.dtype).view(source.shape)
            copies[index] = view.copy_(source)
    return [copy for copy in copies if copy is not None]

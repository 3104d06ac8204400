"""Slots lent by the prefill's room: VRAM that only a prefill needs holds experts in between.

The plan keeps room for one prefill pass's activations and for the bypass's staging area;
decode touches neither. ``LentArena`` is that room as expert slots, allocated in pieces of at
most ``PIECE_BYTES``, freed (and the allocator's cache emptied) before a prefill so that the
prefill's temporaries and staging area get the memory, and allocated again after it.

Pieces, not one allocation: a tensor made during a prefill that outlives it (a library's
lazily made workspace, say) may land inside the freed memory and pin its segment; pieces
still fill the free memory around it, where one allocation of the whole room would need
new memory beyond the plan. That risk is checked, not assumed: after each allocation, the
memory the allocator reserves is compared with what it reserved at the arena's first
allocation, and where it grew by more than ``GROWTH_LIMIT`` (a captured decode graph keeps a
few MB of its own) the arena is freed again (a refusal, counted) and decode runs on the
planned slots alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

ALIGN = 256  # bytes: each matrix of a lent slot starts on this boundary
PIECE_BYTES = 32 * 2**20  # above the caching allocator's 10 MB small-segment threshold
GROWTH_LIMIT = 64 * 2**20


class LentArena:
    def __init__(self, per_layer: Sequence[int], shapes: Sequence[torch.Size], device: torch.device):
        """``per_layer``: lent slots of each layer; ``shapes``: one expert's gate, up and down
        (uint8, as the file stores them)."""
        self.per_layer, self.shapes, self.device = list(per_layer), list(shapes), device
        sizes = [-(-math.prod(s) // ALIGN) * ALIGN for s in shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.slot_bytes = sum(sizes)
        self.slots_per_piece = max(1, PIECE_BYTES // self.slot_bytes)
        self.pieces: list[torch.Tensor] = []
        self.views: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in self.per_layer]
        self.refusals = 0
        self._first_reserved: int | None = None  # the allocator's reserved bytes, arena included

    def allocate(self) -> bool:
        """Allocate the arena and cut it into slots (``views[layer][j]``: gate, up, down);
        False, holding nothing, where it took memory beyond its first allocation's footprint."""
        cuda = self.device.type == "cuda"
        if cuda:
            if self._first_reserved is None:
                _make_lazy_workspaces(self.device)
            torch.cuda.empty_cache()
        total = sum(self.per_layer)
        self.pieces = [torch.empty(min(self.slots_per_piece, total - start) * self.slot_bytes,
                                   dtype=torch.uint8, device=self.device)
                       for start in range(0, total, self.slots_per_piece)]
        if not self._within_first_footprint():
            self.free()
            self.refusals += 1
            return False
        start = 0
        for layer, n in enumerate(self.per_layer):
            self.views[layer] = [self._slot(start + j) for j in range(n)]
            start += n
        return True

    def _within_first_footprint(self) -> bool:
        """Whether the allocator reserves at most ``GROWTH_LIMIT`` more than at the first
        allocation (always on the CPU, where nothing is cached)."""
        if self.device.type != "cuda":
            return True
        reserved = torch.cuda.memory_reserved(self.device)
        if self._first_reserved is None:
            self._first_reserved = reserved
        return reserved <= self._first_reserved + GROWTH_LIMIT

    def free(self) -> None:
        """Drop the slots and give their memory back to the device (on a GPU)."""
        self.views = [[] for _ in self.per_layer]
        self.pieces = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _slot(self, index: int) -> tuple[torch.Tensor, ...]:
        piece, within = divmod(index, self.slots_per_piece)
        base = within * self.slot_bytes
        return tuple(self.pieces[piece][base + off: base + off + math.prod(shape)].view(shape)
                     for off, shape in zip(self.offsets, self.shapes))


def _make_lazy_workspaces(device: torch.device) -> None:
    """cuBLAS takes its workspace from the caching allocator at its first call on a stream
    and keeps it: made here, on the stream prefill runs on, it is not made inside the arena."""
    a = torch.ones(64, 64, dtype=torch.float16, device=device)
    (a @ a).sum().item()

"""Slots lent by the prefill's room: VRAM that only a prefill needs holds experts in between.

The plan keeps room for one prefill pass's activations and for the bypass's staging area;
decode touches neither. ``LentArena`` is that room as expert slots: one allocation, freed
before a prefill so that torch's caching allocator hands the same memory to the prefill's
temporaries and staging area, and allocated again after it.

One risk is checked, not assumed: a tensor that outlives the prefill (a library's lazily
made workspace, say) may land inside the freed memory and pin it, and the arena would then
take new memory beyond the plan. So before each allocation the unused cached memory is
released and the memory the allocator still holds unused is measured: where it grew by more
than ``STRANDED_LIMIT`` since the last allocation (a captured decode graph keeps a few MB
of its own), the arena is not allocated (a refusal, counted) and decode runs on the planned
slots alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

ALIGN = 256  # bytes: each matrix of a lent slot starts on this boundary
STRANDED_LIMIT = 64 * 2**20


class LentArena:
    def __init__(self, per_layer: Sequence[int], shapes: Sequence[torch.Size], device: torch.device,
                 guard_room: bool = False):
        """``per_layer``: lent slots of each layer; ``shapes``: one expert's gate, up and down
        (uint8, as the file stores them); ``guard_room``: check that the allocator gave the
        room back before each allocation (a GPU's caching allocator; host memory is just freed)."""
        self.per_layer, self.shapes, self.device = list(per_layer), list(shapes), device
        self.guard_room = guard_room
        sizes = [-(-math.prod(s) // ALIGN) * ALIGN for s in shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.slot_bytes = sum(sizes)
        self.buffer: torch.Tensor | None = None
        self.views: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in self.per_layer]
        self.refusals = 0
        self._stranded_before: int | None = None  # at the last allocation

    def allocate(self) -> bool:
        """Allocate the arena and cut it into slots (``views[layer][j]``: gate, up, down);
        False, holding nothing, where the allocator could not give the room back."""
        if self.guard_room and not self._room_given_back():
            self.refusals += 1
            return False
        with torch.inference_mode(False):  # lent inside a prefill, written to outside one too
            self.buffer = torch.empty(sum(self.per_layer) * self.slot_bytes, dtype=torch.uint8, device=self.device)
            start = 0
            for layer, n in enumerate(self.per_layer):
                self.views[layer] = [self._slot(start + j) for j in range(n)]
                start += n
        return True

    def _room_given_back(self) -> bool:
        """Release the allocator's unused cached memory; False where it still holds more unused
        than at the last allocation, beyond ``STRANDED_LIMIT`` (a live tensor pins the room)."""
        if self._stranded_before is None:
            _make_lazy_workspaces(self.device)
        torch.cuda.empty_cache()
        stranded = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        if self._stranded_before is not None and stranded > self._stranded_before + STRANDED_LIMIT:
            return False
        self._stranded_before = stranded
        return True

    def free(self) -> None:
        self.views = [[] for _ in self.per_layer]
        self.buffer = None

    def _slot(self, index: int) -> tuple[torch.Tensor, ...]:
        base = index * self.slot_bytes
        return tuple(self.buffer[base + off: base + off + math.prod(shape)].view(shape)
                     for off, shape in zip(self.offsets, self.shapes))


def _make_lazy_workspaces(device: torch.device) -> None:
    """cuBLAS takes its workspace from the caching allocator at its first call on a stream
    and keeps it: made here, on the stream prefill runs on, it is not made inside the arena."""
    a = torch.ones(64, 64, dtype=torch.float16, device=device)
    (a @ a).sum().item()

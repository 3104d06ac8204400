"""The lent slots' arena: its layout in pieces, and the refusal when it would take more memory."""

from __future__ import annotations

import pytest
import torch

from autotune.cache_runtime import lent_slots
from autotune.cache_runtime.lent_slots import ALIGN, GROWTH_LIMIT, LentArena

SHAPES = [torch.Size([3, 100]), torch.Size([3, 100]), torch.Size([5, 90])]


def test_slots_are_aligned_disjoint_views_of_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lent_slots, "PIECE_BYTES", 2 * 1536)  # two slots of 3 x 512 bytes a piece
    arena = LentArena([2, 0, 3], SHAPES, torch.device("cpu"))
    assert arena.slot_bytes == 1536 and arena.allocate()
    assert [len(v) for v in arena.views] == [2, 0, 3]
    assert [p.numel() for p in arena.pieces] == [3072, 3072, 1536]
    views = [m for layer in arena.views for slot in layer for m in slot]
    assert [tuple(m.shape) for m in views[:3]] == [(3, 100), (3, 100), (5, 90)]

    def offset(m: torch.Tensor) -> tuple[int, int]:
        piece = next(i for i, p in enumerate(arena.pieces)
                     if 0 <= m.data_ptr() - p.data_ptr() < p.numel())
        return piece, m.data_ptr() - arena.pieces[piece].data_ptr()

    places = [offset(m) for m in views]
    assert all(start % ALIGN == 0 for _, start in places)
    assert len(set(places)) == len(views) and {piece for piece, _ in places} == {0, 1, 2}
    for m, (piece, start) in zip(views, places):
        m.fill_((piece * 7 + start) % 251 + 1)  # disjoint: no fill overwrites another view
    assert all(int(m.flatten()[0]) == (piece * 7 + start) % 251 + 1 for m, (piece, start) in zip(views, places))
    arena.free()
    assert arena.pieces == [] and arena.views == [[], [], []]


def test_growth_beyond_the_first_footprint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allocator reserves more than the limit beyond the first allocation's footprint: the
    arena is refused (counted) and holds nothing; a few MB more (a decode graph's pool) are not."""
    reserved = iter([1000, 1000 + 8 * 2**20, 1000 + GROWTH_LIMIT + 1])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: next(reserved))
    arena = LentArena([1], SHAPES, torch.device("cuda"))
    assert arena._within_first_footprint() and arena._within_first_footprint()
    assert not arena._within_first_footprint()

    arena = LentArena([2, 1], SHAPES, torch.device("cpu"))
    monkeypatch.setattr(arena, "_within_first_footprint", lambda: False)
    assert not arena.allocate()
    assert arena.refusals == 1 and arena.pieces == [] and arena.views == [[], []]

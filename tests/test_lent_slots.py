"""The lent slots' arena: its layout, and the refusal when the allocator cannot give the room back."""

from __future__ import annotations

import pytest
import torch

from autotune.cache_runtime import lent_slots
from autotune.cache_runtime.lent_slots import ALIGN, STRANDED_LIMIT, LentArena

SHAPES = [torch.Size([3, 100]), torch.Size([3, 100]), torch.Size([5, 90])]


def test_slots_are_aligned_disjoint_views_of_one_allocation() -> None:
    arena = LentArena([2, 0, 1], SHAPES, torch.device("cpu"))
    assert arena.allocate()
    assert [len(v) for v in arena.views] == [2, 0, 1]
    views = [m for layer in arena.views for slot in layer for m in slot]
    assert [tuple(m.shape) for m in views[:3]] == [(3, 100), (3, 100), (5, 90)]
    starts = sorted(m.data_ptr() - arena.buffer.data_ptr() for m in views)
    assert all(s % ALIGN == 0 for s in starts)
    for m, start in zip(sorted(views, key=lambda m: m.data_ptr()), starts):
        m.fill_(start % 251 + 1)  # disjoint: no fill overwrites another view
    assert all(int(m.flatten()[0]) == (m.data_ptr() - arena.buffer.data_ptr()) % 251 + 1 for m in views)
    arena.free()
    assert arena.buffer is None and arena.views == [[], [], []]


def test_a_pinned_room_is_refused_not_taken_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unused memory the allocator cannot release grows by more than the limit since the last
    allocation: the arena is refused (counted); a few MB more (a decode graph's pool) are not."""
    reserved = iter([1000, 1000 + 8 * 2**20, 1000 + 8 * 2**20 + STRANDED_LIMIT + 1])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: next(reserved))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(lent_slots, "_make_lazy_workspaces", lambda device: None)
    arena = LentArena([1], SHAPES, torch.device("cuda"))
    assert arena._room_given_back() and arena._room_given_back()
    assert not arena._room_given_back()

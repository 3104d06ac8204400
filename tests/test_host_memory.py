"""Experts packed into few pinned arenas (the layout and copies, on the CPU with plain buffers)."""

from __future__ import annotations

import torch

from autotune.cache_runtime.host_memory import ALIGN_BYTES, arena_layout, copy_into_arenas
from autotune.cache_runtime.dequant import row_bytes

QWEN3_30B_LAYER = [128 * 768 * row_bytes("Q4_K", 2048)] * 2 + [128 * 2048 * row_bytes("Q6_K", 768)]  # gate, up, down


def _power_of_two_ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


def test_layout_keeps_order_aligns_each_tensor_and_opens_an_arena_only_when_one_is_full():
    sizes = [5000, 3000, 9000, 100, 20000, 1]
    arenas = arena_layout(sizes, arena_bytes=16384)
    assert [index for arena in arenas for index, _ in arena] == list(range(len(sizes)))
    assert arenas == [[(0, 0), (1, 8192)], [(2, 0), (3, 12288)], [(4, 0)], [(5, 0)]]
    for arena in arenas:
        assert all(offset % ALIGN_BYTES == 0 for _, offset in arena)
        ends = [offset + sizes[index] for index, offset in arena]
        assert all(end <= next_offset for end, (_, next_offset) in zip(ends, arena[1:]))


def test_copies_equal_their_sources_and_share_a_few_buffers():
    sources = [torch.randint(0, 255, (n,), dtype=torch.uint8) for n in (7000, 100, 12000, 4096)]
    sources.append(torch.randn(3, 50))
    buffers: list[torch.Tensor] = []

    def allocate(nbytes: int) -> torch.Tensor:
        buffers.append(torch.zeros(nbytes, dtype=torch.uint8))
        return buffers[-1]

    copies = copy_into_arenas(sources, allocate, arena_bytes=16384)
    assert len(buffers) == 3
    for source, copy in zip(sources, copies, strict=True):
        assert copy.dtype == source.dtype and copy.shape == source.shape and torch.equal(copy, source)
        assert any(copy.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in buffers)


def test_arenas_pin_a_few_percent_more_than_qwen3_30b_experts_hold_where_one_allocation_each_pins_a_third_more():
    sizes = QWEN3_30B_LAYER * 48
    held = sum(sizes)
    one_each = sum(_power_of_two_ceil(n) for n in sizes)
    arenas = arena_layout(sizes)
    packed = sum(_power_of_two_ceil(arena[-1][1] + sizes[arena[-1][0]]) for arena in arenas)
    assert one_each / held > 1.3
    assert packed / held < 1.05


def test_every_copy_starts_aligned_where_the_allocator_gives_a_misaligned_base():
    """The pinned allocator may hand out a base only 16-byte aligned (seen on the GPU machine);
    the CPU expert kernels refuse memory not 32-byte aligned."""
    def misaligned(nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes + 64, dtype=torch.uint8)[16:][:nbytes]

    sources = [torch.randn(100), torch.randn(3, 7), torch.randn(5000)]
    copies = copy_into_arenas(sources, misaligned, arena_bytes=64 * 1024)
    assert all(copy.data_ptr() % ALIGN_BYTES == 0 for copy in copies)
    assert all(torch.equal(copy, source) for copy, source in zip(copies, sources))

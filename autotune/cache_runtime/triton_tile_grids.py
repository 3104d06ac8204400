"""Triton tiles of the grid types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S.

Their weights are rows of a grid (``iq_grids``) gathered from ``grid``, a float32 pointer
to the type's table that the kernels take for these types only. The tile is that of the
4-bit 32-element types, (8, S, R, 8 j, 2 n, 2): element 32j + 16n + 2a + t, position
p = 16n + 2a + t of sub-block j; with grid rows of 8 (IQ1, IQ2) it is lane 2 (a % 4) + t
of the sub-block's row 2n + a // 4, with rows of 4 (IQ3) lane 2 (a % 2) + t of row
4n + a // 2. The layouts follow ``gguf.quants`` (``dequant_iq.py`` in torch). Blocks are
2-byte aligned, so 32-bit fields are read as two uint16.
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.dequant_iq import IQ1_DELTA
from autotune.cache_runtime.triton_tile_parts import blocks32_axes, load_f16, load_u16

_DELTA: tl.constexpr = tl.constexpr(IQ1_DELTA)


@triton.jit
def _u32(p):
    """The little-endian uint32 at 2-byte aligned byte pointer p, as int32 bits."""
    return load_u16(p) | (load_u16(p + 2) << 16)


@triton.jit
def _signed(x, negative):
    """x, negated where ``negative`` is 1 (exactly x * -1)."""
    return tl.where(negative != 0, -x, x)


@triton.jit
def _ksign(index, bit):
    """Bit ``bit`` (0..7) of ggml's sign byte for a 7-bit sign index: the index's bits, and
    as bit 7 the parity of their count."""
    parity = index ^ (index >> 4)
    parity = parity ^ (parity >> 2)
    parity = (parity ^ (parity >> 1)) & 1
    return ((index | (parity << 7)) >> bit) & 1


@triton.jit
def _row8(grid, index, a, t):
    """Lane 2 (a % 4) + t of grid rows of 8."""
    return tl.load(grid + index * 8 + 2 * (a % 4) + t)


@triton.jit
def iq2_xxs(blk, grid):
    """66 bytes: f16 d; per sub-block j 8 bytes at 2 + 8j: 4 grid indices, then a uint32 of
    4 x 7 sign bits and a 4-bit scale s; d (0.5 + s) / 4 grid sign."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    aux = _u32(ba + 6 + 8 * j)
    db = load_f16(ba) * (0.5 + ((aux >> 28) & 15).to(tl.float32)) * 0.25
    g = 2 * n + a // 4  # the grid row within the sub-block
    index = tl.load(b + 2 + 8 * j + g).to(tl.int32)
    sign = _ksign((aux >> (7 * g)) & 127, 2 * (a % 4) + t)
    return _signed(db * _row8(grid, index, a, t), sign), k


@triton.jit
def _byte_in_word(p, j):
    """Byte j (the tile's j axis) at 2-byte aligned p, as int32, read from the 2-byte word that
    holds it: a load of bytes contiguous along j takes a layout of its own, which costs a
    conversion of the whole tile through shared memory (``autotune.studies.sass_counts``)."""
    return (load_u16(p + 2 * (j // 2)) >> (8 * (j % 2))) & 255


@triton.jit
def _iq2_scale(ba, j, n):
    """IQ2_XS / IQ2_S: the scale of sub-block 2j + n, nibble n of byte j at ba, as float32."""
    return ((_byte_in_word(ba, j) >> (4 * n)) & 15).to(tl.float32)


@triton.jit
def iq2_xs(blk, grid):
    """74 bytes: f16 d, 32 uint16 (9-bit grid index, 7-bit sign index), 16 nibble scales."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    db = load_f16(ba) * (0.5 + _iq2_scale(ba + 66, j, n)) * 0.25
    q = load_u16(b + 2 + 2 * (4 * j + 2 * n + a // 4))
    sign = _ksign(q >> 9, 2 * (a % 4) + t)
    return _signed(db * _row8(grid, q & 511, a, t), sign), k


@triton.jit
def iq2_s(blk, grid):
    """82 bytes: f16 d, 32 low bytes of 10-bit grid indices, 32 sign bytes, 8 bytes of the
    indices' high 2 bits, 16 nibble scales."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    db = load_f16(ba) * (0.5 + _iq2_scale(ba + 74, j, n)) * 0.25
    i = 4 * j + 2 * n + a // 4  # the grid row in the block
    high = (tl.load(b + 66 + j).to(tl.int32) >> (2 * (i % 4))) & 3
    index = tl.load(b + 2 + i).to(tl.int32) | (high << 8)
    sign = (tl.load(b + 34 + i).to(tl.int32) >> (2 * (a % 4) + t)) & 1
    return _signed(db * _row8(grid, index, a, t), sign), k


@triton.jit
def iq3_xxs(blk, grid):
    """98 bytes: f16 d, 64 grid indices (rows of 4), 8 uint32 at 66 of 4 x 7 sign bits and a
    4-bit scale s; d (0.5 + s) / 2 grid sign."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    aux = _u32(ba + 66 + 4 * j)
    db = load_f16(ba) * (0.5 + ((aux >> 28) & 15).to(tl.float32)) * 0.5
    index = tl.load(b + 2 + 8 * j + 4 * n + a // 2).to(tl.int32)
    sign = _ksign((aux >> (7 * (2 * n + a // 4))) & 127, 2 * (a % 4) + t)
    return _signed(db * tl.load(grid + index * 4 + 2 * (a % 2) + t), sign), k


@triton.jit
def iq3_s(blk, grid):
    """110 bytes: f16 d, 64 low bytes of 9-bit grid indices (rows of 4), 8 bytes of their
    ninth bits, 32 sign bytes, 8 nibble scales s; d (1 + 2 s) grid sign."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    s = (tl.load(ba + 106 + j // 2).to(tl.int32) >> (4 * (j % 2))) & 15
    db = load_f16(ba) * (1 + 2 * s).to(tl.float32)
    r = 4 * n + a // 2  # the grid row within the sub-block
    high = (tl.load(b + 66 + j).to(tl.int32) >> r) & 1
    index = tl.load(b + 2 + 8 * j + r).to(tl.int32) | (high << 8)
    sign = (tl.load(b + 74 + 4 * j + 2 * n + a // 4).to(tl.int32) >> (2 * (a % 4) + t)) & 1
    return _signed(db * tl.load(grid + index * 4 + 2 * (a % 2) + t), sign), k


@triton.jit
def _iq1_delta(flag):
    return tl.where(flag == 0, _DELTA, -_DELTA)


@triton.jit
def iq1_s(blk, grid):
    """50 bytes: f16 d, 32 low bytes of 11-bit grid indices, 8 uint16 at 34 (4 x 3 high index
    bits, a 3-bit scale s, the delta's sign); d (2 s + 1) (grid +- 1/8)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    qh = load_u16(ba + 34 + 2 * j)
    dl = load_f16(ba) * (2 * ((qh >> 12) & 7) + 1).to(tl.float32)
    g = 2 * n + a // 4
    index = tl.load(b + 2 + 4 * j + g).to(tl.int32) | (((qh >> (3 * g)) & 7) << 8)
    return dl * (_row8(grid, index, a, t) + _iq1_delta(qh & 0x8000)), k


@triton.jit
def iq1_m(blk, grid):
    """56 bytes: 32 low bytes of 11-bit grid indices, 16 bytes of nibbles (3 high index bits,
    the delta's sign), 4 uint16 at 48 of 4 x 3-bit scales s whose top nibbles together are
    the f16 d; d (2 s + 1) (grid +- 1/8)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    d_bits = (((load_u16(ba + 48) >> 12) & 0xF) | ((load_u16(ba + 50) >> 8) & 0xF0)
              | ((load_u16(ba + 52) >> 4) & 0xF00) | (load_u16(ba + 54) & 0xF000))
    d = d_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    sub = 2 * j + n  # the scale's index
    s = (load_u16(ba + 48 + 2 * (sub // 4)) >> (3 * (sub % 4))) & 7
    dl = d * (2 * s + 1).to(tl.float32)
    i = 4 * j + 2 * n + a // 4  # the grid row in the block
    nibble = (tl.load(b + 32 + i // 2).to(tl.int32) >> (4 * (i % 2))) & 15
    index = tl.load(b + i).to(tl.int32) | ((nibble & 7) << 8)
    return dl * (_row8(grid, index, a, t) + _iq1_delta(nibble & 8)), k

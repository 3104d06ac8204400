"""Triton tiles of the types built from 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
MXFP4 and Q8_0 (8 blocks make a super-block), and IQ4_XS (8 sub-blocks of 32 under one f16
scale). The tile shapes and element order are ``triton_tiles``'s; the layouts follow
``gguf.quants`` (``dequant.py`` in torch).

The 4-bit types share one tile, (8, S, R, 8 j, 2 n, 2): element 32j + 16n + 2a + t is
nibble n of byte 2a + t of block j's 16 code bytes. t spans 2 bytes, the alignment of the
18- and 22-byte blocks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.codebooks import IQ4_NL_CODES, MXFP4_CODES
from autotune.cache_runtime.triton_tile_parts import (blocks32_axes, code_lookup, e8m0_half, load_f16, load_u16,
                                                      prmt_lookup4)

IQ4_LOW: tl.constexpr = tl.constexpr(IQ4_NL_CODES[0])
IQ4_HIGH: tl.constexpr = tl.constexpr(IQ4_NL_CODES[1])
MXFP4_LOW: tl.constexpr = tl.constexpr(MXFP4_CODES[0])
MXFP4_HIGH: tl.constexpr = tl.constexpr(MXFP4_CODES[1])
IQ4_PRMT: tl.constexpr = prmt_lookup4(IQ4_NL_CODES)
MXFP4_PRMT: tl.constexpr = prmt_lookup4(MXFP4_CODES)


@triton.jit
def _nibbles(p, n):
    """Nibble n of the bytes at p, as int32."""
    return (tl.load(p).to(tl.int32) >> (4 * n)) & 15


@triton.jit
def _fifth_bit(qh, a, t, n):
    """Bit 16n + 2a + t of the little-endian uint32 at byte pointer qh, as int32 0 or 16."""
    return ((tl.load(qh + 2 * n + a // 4).to(tl.int32) >> ((2 * a + t) % 8)) & 1) << 4


@triton.jit
def q4_0(blk):
    """Blocks of 18 bytes: f16 d, 16 code bytes; d (q - 8)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    q = _nibbles(b + 18 * j + 2 + 2 * a + t, n)
    return load_f16(ba + 18 * j) * (q - 8).to(tl.float32), k


@triton.jit
def q4_1(blk):
    """Blocks of 20 bytes: f16 d and m, 16 code bytes; d q + m."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    q = _nibbles(b + 20 * j + 4 + 2 * a + t, n)
    return load_f16(ba + 20 * j) * q.to(tl.float32) + load_f16(ba + 20 * j + 2), k


@triton.jit
def q5_0(blk):
    """Blocks of 22 bytes: f16 d, the fifth bits (uint32), 16 code bytes; d (q - 16)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    q = _nibbles(b + 22 * j + 6 + 2 * a + t, n) | _fifth_bit(b + 22 * j + 2, a, t, n)
    return load_f16(ba + 22 * j) * (q - 16).to(tl.float32), k


@triton.jit
def q5_1(blk):
    """Blocks of 24 bytes: f16 d and m, the fifth bits (uint32), 16 code bytes; d q + m."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    q = _nibbles(b + 24 * j + 8 + 2 * a + t, n) | _fifth_bit(b + 24 * j + 4, a, t, n)
    return load_f16(ba + 24 * j) * q.to(tl.float32) + load_f16(ba + 24 * j + 2), k


@triton.jit
def iq4_nl(blk):
    """Q4_0's blocks, the nibbles looked up in the IQ4 code book."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    q = _nibbles(b + 18 * j + 2 + 2 * a + t, n)
    return load_f16(ba + 18 * j) * code_lookup(q, IQ4_LOW, IQ4_HIGH, IQ4_PRMT), k


@triton.jit
def iq4_xs(blk):
    """136 bytes: f16 d, the high 2 bits of 8 six-bit scales (uint16), their low nibbles (4
    bytes), 8 x 16 code bytes; d (scale_j - 32) codebook(q)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    low = (tl.load(ba + 4 + j // 2).to(tl.int32) >> (4 * (j % 2))) & 15
    high = (tl.load(ba + 2 + j // 4).to(tl.int32) >> (2 * (j % 4))) & 3
    sc = ((low | (high << 4)) - 32).to(tl.float32)
    q = _nibbles(b + 8 + 16 * j + 2 * a + t, n)
    return (load_f16(ba) * sc) * code_lookup(q, IQ4_LOW, IQ4_HIGH, IQ4_PRMT), k


@triton.jit
def mxfp4(blk):
    """Blocks of 17 bytes: an e8m0 exponent e, 16 code bytes; 2^(e - 128) codebook(q)
    (ggml_e8m0_to_fp32_half: subnormal for e < 2).

    Block j's code bytes 2a and 2a + 1 start at an odd address for even j. They are read
    as the 2-byte words around them (both aligned: blocks are), so that every thread holds
    its elements' codes in one load as other 32-element types do, rather than the tile's
    byte loads taking a layout of their own, which cost a conversion of the whole tile
    through shared memory (``autotune.studies.sass_counts``)."""
    b, ba, a, t, j, n, k = blocks32_axes(blk)
    e = tl.load(ba + 17 * j).to(tl.int32)
    d = e8m0_half(e)
    pair = ba + 17 * j + 1 + 2 * a  # byte 2a of block j's codes
    odd = (j + 1) % 2  # 17 j + 1 + 2 a is odd for even j
    word = load_u16(pair - odd)
    codes = tl.where(odd == 1, (word >> 8) | ((load_u16(pair + odd) & 255) << 8), word)
    q = (codes >> (8 * t + 4 * n)) & 15
    return d * code_lookup(q, MXFP4_LOW, MXFP4_HIGH, MXFP4_PRMT), k


@triton.jit
def q8_0(blk):
    """-> (16, S, R, 8 j, 2): 8 blocks of 34 bytes (f16 scale, 32 int8); element 32j + 2a + t."""
    b = blk[None, :, :, None, None]
    a = tl.arange(0, 16)[:, None, None, None, None]
    t = tl.arange(0, 2)[None, None, None, None, :]
    j = tl.arange(0, 8)[None, None, None, :, None]
    q = tl.load((b + 34 * j + 2 + 2 * a + t).to(tl.pointer_type(tl.int8))).to(tl.float32)
    return q * load_f16(b + 0 * a + 34 * j), 32 * j + 2 * a + t

"""The 8-bit-input dot products of the types built from 32-element blocks (``triton_int8``):
Q8_0, the 4-bit ones (Q4_0, Q4_1, IQ4_NL, MXFP4, IQ4_XS) and the 5-bit ones (Q5_0, Q5_1).

A chunk is 8 blocks of a row (``triton_int8.chunk_dots`` gives each chunk's first block;
its first ``lo`` blocks, where a row's last chunk overlaps the one before, are dropped).
Block j of a chunk meets input block ``first + j``, as llama.cpp's ``vec_dot_*_q8_1`` do:
- a 4-bit block's 16 code bytes hold elements i (low nibbles) and 16 + i (high nibbles), so
  code word w, masked, lines up with input words w and w + 4 of the block;
- the non-linear types (IQ4_NL, IQ4_XS, MXFP4) look their nibbles up in their code book four
  at a time (``code_lookup_bytes``), into signed bytes;
- the offsets of Q4_0 (-8) and Q5_0 (-16) and the mins of Q4_1 and Q5_1 come once a block,
  from the input block's scaled code sum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_tile_blocks32 import IQ4_HIGH, IQ4_LOW, IQ4_PRMT, MXFP4_HIGH, MXFP4_LOW, MXFP4_PRMT
from autotune.cache_runtime.triton_tile_parts import (code_lookup_bytes, dp4a, e8m0_half, load_f16, load_u16,
                                                       load_u32_bytes, load_u32_halves)


@triton.jit
def q8_0_dots(blk, first, lo, row_words, row_blocks, xq_ptr, xd_ptr):
    """(S, R) dot products of chunks of 8 Q8_0 blocks (34 bytes: f16 d, 32 int8 codes) at ``blk``
    (S, R byte pointers) with the input from block ``first`` (S,) on, less the chunk's first
    ``lo`` (S,) blocks. ``row_words``, ``row_blocks`` (R,): where each row's input starts
    (``triton_int8_kquants.q4_k_dots``, which also explains why the summed axes come first). A
    block's 8 code words are read as 2 halves of 4: the tile is (16 halves, S, R, 4)."""
    b = blk[None, :, :, None]
    half = tl.arange(0, 16)[:, None, None, None]
    w = tl.arange(0, 4)[None, None, None, :]
    codes = load_u32_bytes(b + 34 * (half // 2) + 2 + 16 * (half % 2) + 4 * w)
    word = first[None, :, None, None] * 8 + 4 * half + w + row_words[None, None, :, None]
    dots = tl.sum(dp4a(codes, tl.load(xq_ptr + word), tl.zeros_like(codes), SIGNED=True), 3).to(tl.float32)
    j = tl.arange(0, 16)[:, None, None] // 2  # each half's block
    return _scaled_sum(load_f16(blk[None, :, :] + 34 * j) * dots, j, first, lo, row_blocks, xd_ptr)


@triton.jit
def _scaled_sum(v, j, first, lo, row_blocks, xd_ptr):
    """sum over axis 0 of v (., S, R), each times its block j's input scale (input block first +
    j), blocks j < lo dropped."""
    xd = tl.load(xd_ptr + first[None, :, None] + j + row_blocks[None, None, :])
    return tl.sum(tl.where(j >= lo[None, :, None], v * xd, 0.0), 0)


@triton.jit
def _code_words(b, j, w, QT: tl.constexpr):
    """Word w (bytes 4w .. 4w + 3) of block j's 16 code bytes, as int32. (4-byte aligned words are
    loaded through an int32 pointer cast first, so that Triton sees their run as contiguous.)"""
    if QT == 3:  # Q4_1: 20 bytes, f16 d and m, then the codes
        return tl.load(b.to(tl.pointer_type(tl.int32)) + 5 * j + 1 + w)
    elif QT == 6:  # Q5_0: 22 bytes, f16 d, 4 bytes of fifth bits, the codes
        return load_u32_halves(b + 22 * j + 6 + 4 * w)
    elif QT == 7:  # Q5_1: 24 bytes, f16 d and m, the fifth bits, the codes
        return tl.load(b.to(tl.pointer_type(tl.int32)) + 6 * j + 2 + w)
    elif QT == 39:  # MXFP4: 17 bytes, the e8m0 exponent, the codes
        return load_u32_bytes(b + 17 * j + 1 + 4 * w)
    elif QT == 23:  # IQ4_XS: a 136-byte super-block, its 8 blocks' codes from byte 8 on
        return tl.load(b.to(tl.pointer_type(tl.int32)) + 2 + 4 * j + w)
    else:  # Q4_0, IQ4_NL: 18 bytes, f16 d, the codes
        return load_u32_halves(b + 18 * j + 2 + 4 * w)


@triton.jit
def _spread_bits(bits):
    """Bits 0..3 of int32 ``bits`` to bit 4 of bytes 0..3 (a fifth bit above each nibble)."""
    return ((bits & 1) << 4) | ((bits & 2) << 11) | ((bits & 4) << 18) | ((bits & 8) << 25)


@triton.jit
def _block_scale(b3, j3, QT: tl.constexpr):
    """Block j's scale: its f16 d, MXFP4's 2^(e - 128), or IQ4_XS's d (scale_j - 32)."""
    if QT == 3:
        return load_f16(b3 + 20 * j3)
    elif QT == 6:
        return load_f16(b3 + 22 * j3)
    elif QT == 7:
        return load_f16(b3 + 24 * j3)
    elif QT == 39:
        return e8m0_half(tl.load(b3 + 17 * j3).to(tl.int32))
    elif QT == 23:
        low = (tl.load(b3 + 4 + j3 // 2).to(tl.int32) >> (4 * (j3 % 2))) & 15
        high = (load_u16(b3 + 2) >> (2 * j3)) & 3
        return load_f16(b3) * ((low | (high << 4)) - 32).to(tl.float32)
    else:
        return load_f16(b3 + 18 * j3)


@triton.jit
def nibble_block_dots(blk, first, lo, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr, QT: tl.constexpr):
    """(S, R) dot products of chunks of 8 blocks of a 4- or 5-bit type at ``blk`` with the input
    (``q8_0_dots``' arguments; ``xs_ptr``: the input blocks' scaled code sums). Tile (8 j, S, R, 4 w)."""
    b = blk[None, :, :, None]
    j = tl.arange(0, 8)[:, None, None, None]
    w = tl.arange(0, 4)[None, None, None, :]
    codes = _code_words(b, j, w, QT)  # (8 j, S, R, 4 w)
    low = codes & 0x0F0F0F0F
    high = (codes >> 4) & 0x0F0F0F0F
    if QT == 6 or QT == 7:  # bit i of the block's fifth bits goes above element i's nibble
        fifth = load_u32_halves(b + 22 * j + 2) if QT == 6 else tl.load(b.to(tl.pointer_type(tl.int32)) + 6 * j + 1)
        low |= _spread_bits(fifth >> (4 * w))
        high |= _spread_bits(fifth >> (16 + 4 * w))
    if QT == 20 or QT == 23:
        low = code_lookup_bytes(low, IQ4_LOW, IQ4_HIGH, IQ4_PRMT)
        high = code_lookup_bytes(high, IQ4_LOW, IQ4_HIGH, IQ4_PRMT)
    elif QT == 39:
        low = code_lookup_bytes(low, MXFP4_LOW, MXFP4_HIGH, MXFP4_PRMT)
        high = code_lookup_bytes(high, MXFP4_LOW, MXFP4_HIGH, MXFP4_PRMT)
    SIGNED: tl.constexpr = QT == 20 or QT == 23 or QT == 39
    word = (first[None, :, None, None] + j) * 8 + w + row_words[None, None, :, None]
    dots = dp4a(high, tl.load(xq_ptr + word + 4), dp4a(low, tl.load(xq_ptr + word), tl.zeros_like(codes), SIGNED),
                SIGNED)
    dots = tl.sum(dots, 3).to(tl.float32)  # (8 j, S, R)
    b3 = blk[None, :, :]
    j3 = tl.arange(0, 8)[:, None, None]
    d = _block_scale(b3, j3, QT)
    if SIGNED:
        return _scaled_sum(d * dots, j3, first, lo, row_blocks, xd_ptr)
    # the offset (Q4_0, Q5_0) or min (Q4_1, Q5_1) times the input block's scaled code sum
    xs = tl.load(xs_ptr + first[None, :, None] + j3 + row_blocks[None, None, :])
    if QT == 2:
        offset = -8.0 * d * xs
    elif QT == 6:
        offset = -16.0 * d * xs
    else:
        offset = load_f16(b3 + (20 if QT == 3 else 24) * j3 + 2) * xs
    return _scaled_sum(d * dots, j3, first, lo, row_blocks, xd_ptr) + tl.sum(
        tl.where(j3 >= lo[None, :, None], offset, 0.0), 0)

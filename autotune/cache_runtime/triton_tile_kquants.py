"""Triton tiles of the K-quants (Q2_K to Q6_K): super-blocks of 256 elements with sub-block
scales. The tile shapes and element order are ``triton_tiles``'s; the layouts follow
``gguf.quants`` (``dequant.py`` in torch)."""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_tile_parts import load_f16, middle_axes, small_int_to_float, tile_axes


@triton.jit
def k_scale_min(b, sub):
    """The 6-bit scale and min of sub-block ``sub`` (0..7) from the 12 bytes at b + 4 (Q4_K's and
    Q5_K's layout), as float32; ``b`` and ``sub`` of any shapes that broadcast."""
    x = tl.load(b + 4 + sub).to(tl.int32)
    y = tl.load(b + 8 + sub).to(tl.int32)
    z = tl.load(b + 4 + tl.where(sub < 4, sub, sub - 4)).to(tl.int32)
    low = sub < 4
    sc = tl.where(low, x & 63, (y & 15) | ((z >> 6) << 4))
    mn = tl.where(low, y & 63, (y >> 4) | ((x >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def q2_k(blk):
    """-> (8, S, R, 2 h, 4 s, 4): element 128h + 32s + 4a + t is bits 2s.. of qs[32h + 4a + t];
    84 bytes: 16 scale/min nibble pairs, 64 of codes, f16 d and dmin."""
    b, ba, a, t = tile_axes(blk, 8, 4)
    h, s = middle_axes(2, 4)
    sc = tl.load(ba + 8 * h + 2 * s + a // 4).to(tl.int32)
    qs = tl.load(b + 16 + 32 * h + 4 * a + t).to(tl.int32)
    q = ((qs >> (2 * s)) & 3).to(tl.float32)
    return (load_f16(ba + 80) * (sc & 15).to(tl.float32)) * q - load_f16(ba + 82) * (sc >> 4).to(tl.float32), \
        128 * h + 32 * s + 4 * a + t


@triton.jit
def q3_k(blk):
    """-> (16, S, R, 2 h, 4 s, 2): element 128h + 32s + 2a + t is bits 2s.. of qs[32h + 2a + t],
    less 4 unless bit 4h + s of hmask[2a + t] is set; 110 bytes: hmask 32, qs 64, 16 six-bit
    scales in 12, f16 d."""
    b, ba, a, t = tile_axes(blk, 16, 2)
    h, s = middle_axes(2, 4)
    i = 8 * h + 2 * s + a // 8  # the scale's index
    low = (tl.load(ba + 96 + i % 8).to(tl.int32) >> (4 * (i // 8))) & 15
    high = (tl.load(ba + 104 + i % 4).to(tl.int32) >> (2 * (i // 4))) & 3
    sc = small_int_to_float((low | (high << 4)) - 32)
    ql = (tl.load(b + 32 + 32 * h + 2 * a + t).to(tl.int32) >> (2 * s)) & 3
    hbit = (tl.load(b + 2 * a + t).to(tl.int32) >> (4 * h + s)) & 1
    q = small_int_to_float(ql - 4 * (1 - hbit))
    return (load_f16(ba + 108) * sc) * q, 128 * h + 32 * s + 2 * a + t


@triton.jit
def q4_k(blk):
    """-> (8, S, R, 4 j, 2 n, 4): element 64j + 32n + 4a + t is nibble n of qs[32j + 4a + t]."""
    b, ba, a, t = tile_axes(blk, 8, 4)
    j, n = middle_axes(4, 2)
    sc, mn = k_scale_min(ba, 2 * j + n)
    qs = tl.load(b + 16 + 32 * j + 4 * a + t).to(tl.int32)
    q = ((qs >> (4 * n)) & 15).to(tl.float32)
    return (load_f16(ba) * sc) * q - load_f16(ba + 2) * mn, 64 * j + 32 * n + 4 * a + t


@triton.jit
def q5_k(blk):
    """Q4_K's layout plus a fifth bit: bit (2j + n) of qh[4a + t]."""
    b, ba, a, t = tile_axes(blk, 8, 4)
    j, n = middle_axes(4, 2)
    sub = 2 * j + n
    sc, mn = k_scale_min(ba, sub)
    qh = tl.load(b + 16 + 4 * a + t).to(tl.int32)
    qs = tl.load(b + 48 + 32 * j + 4 * a + t).to(tl.int32)
    q = (((qs >> (4 * n)) & 15) | (((qh >> sub) & 1) << 4)).to(tl.float32)
    return (load_f16(ba) * sc) * q - load_f16(ba + 2) * mn, 64 * j + 32 * n + 4 * a + t


@triton.jit
def q6_k(blk):
    """-> (16, S, R, 2 h, 2 n, 2 u, 2): element 128h + 64n + 32u + 2a + t."""
    b = blk[None, :, :, None, None, None, None]
    a = tl.arange(0, 16)[:, None, None, None, None, None, None]
    h = tl.arange(0, 2)[None, None, None, :, None, None, None]
    n = tl.arange(0, 2)[None, None, None, None, :, None, None]
    u = tl.arange(0, 2)[None, None, None, None, None, :, None]
    t = tl.arange(0, 2)[None, None, None, None, None, None, :]
    ba = b + 0 * a
    ql = tl.load(b + 64 * h + 32 * u + 2 * a + t).to(tl.int32)
    qh = tl.load(b + 128 + 32 * h + 2 * a + t).to(tl.int32)
    sc = tl.load((ba + 192 + 8 * h + 4 * n + 2 * u + a // 8).to(tl.pointer_type(tl.int8))).to(tl.float32)
    q = (((ql >> (4 * n)) & 15) | (((qh >> (4 * n + 2 * u)) & 3) << 4)) - 32
    return (load_f16(ba + 208) * sc) * small_int_to_float(q), 128 * h + 64 * n + 32 * u + 2 * a + t

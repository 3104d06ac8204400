"""Triton device functions that dequantize GGML super-blocks in registers.

Every type is read in super-blocks of 256 elements (8 blocks of Q8_0, 256 floats for the
float types), so one kernel shape serves all of them. A tile function takes ``blk``, a
(R, S) tensor of uint8 pointers to super-block starts (R weight rows, S super-blocks), and
returns the float32 weights with the super-block's elements spread over trailing axes,
in natural order (flattening the trailing axes gives elements 0..255), plus the element
index of each position (``k``, broadcastable) so callers can fetch the matching inputs.
The layouts follow ``gguf.quants`` (see ``dequant.py`` for the same in torch).

Callers clamp every pointer into the weight (no masks here): loads stay unconditional
and wide, and results for clamped rows are dropped afterwards.
"""

from __future__ import annotations

import triton
import triton.language as tl

# GGML type ids, as constexpr codes for the kernels.
QTYPE_CODES = {"F32": 0, "F16": 1, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
# Bytes of 256 elements of each type.
SUPERBLOCK_BYTES = {"F32": 1024, "F16": 512, "BF16": 512, "Q8_0": 272, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


@triton.jit
def _f16(p):
    return tl.load(p.to(tl.pointer_type(tl.float16))).to(tl.float32)


@triton.jit
def _k_scale_min(b, sub):
    """The 6-bit scale and min of sub-block ``sub`` (0..7) from the 12 bytes at b + 4."""
    x = tl.load(b + 4 + sub).to(tl.int32)
    y = tl.load(b + 8 + sub).to(tl.int32)
    z = tl.load(b + 4 + tl.where(sub < 4, sub, sub - 4)).to(tl.int32)
    low = sub < 4
    sc = tl.where(low, x & 63, (y & 15) | ((z >> 6) << 4))
    mn = tl.where(low, y & 63, (y >> 4) | ((x >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _q4_k(blk):
    """-> (R, S, 4, 2, 32): element 64j + 32n + i is nibble n of qs[32j + i]."""
    b = blk[:, :, None, None, None]
    j = tl.arange(0, 4)[None, None, :, None, None]
    n = tl.arange(0, 2)[None, None, None, :, None]
    i = tl.arange(0, 32)[None, None, None, None, :]
    sc, mn = _k_scale_min(b, 2 * j + n)
    qs = tl.load(b + 16 + 32 * j + i).to(tl.int32)
    q = ((qs >> (4 * n)) & 15).to(tl.float32)
    return (_f16(b) * sc) * q - _f16(b + 2) * mn, 64 * j + 32 * n + i


@triton.jit
def _q5_k(blk):
    """Q4_K's layout plus a fifth bit: bit (2j + n) of qh[i]."""
    b = blk[:, :, None, None, None]
    j = tl.arange(0, 4)[None, None, :, None, None]
    n = tl.arange(0, 2)[None, None, None, :, None]
    i = tl.arange(0, 32)[None, None, None, None, :]
    sub = 2 * j + n
    sc, mn = _k_scale_min(b, sub)
    qh = tl.load(b + 16 + i).to(tl.int32)
    qs = tl.load(b + 48 + 32 * j + i).to(tl.int32)
    q = (((qs >> (4 * n)) & 15) | (((qh >> sub) & 1) << 4)).to(tl.float32)
    return (_f16(b) * sc) * q - _f16(b + 2) * mn, 64 * j + 32 * n + i


@triton.jit
def _q6_k(blk):
    """-> (R, S, 2, 2, 2, 32): element 128h + 64n + 32u + i."""
    b = blk[:, :, None, None, None, None]
    h = tl.arange(0, 2)[None, None, :, None, None, None]
    n = tl.arange(0, 2)[None, None, None, :, None, None]
    u = tl.arange(0, 2)[None, None, None, None, :, None]
    i = tl.arange(0, 32)[None, None, None, None, None, :]
    ql = tl.load(b + 64 * h + 32 * u + i).to(tl.int32)
    qh = tl.load(b + 128 + 32 * h + i).to(tl.int32)
    sc = tl.load((b + 192 + 8 * h + 4 * n + 2 * u + i // 16).to(tl.pointer_type(tl.int8))).to(tl.float32)
    q = (((ql >> (4 * n)) & 15) | (((qh >> (4 * n + 2 * u)) & 3) << 4)) - 32
    return (_f16(b + 208) * sc) * q.to(tl.float32), 128 * h + 64 * n + 32 * u + i


@triton.jit
def _q8_0(blk):
    """-> (R, S, 8, 32): 8 blocks of 34 bytes (f16 scale, 32 int8)."""
    b = blk[:, :, None, None]
    j = tl.arange(0, 8)[None, None, :, None]
    i = tl.arange(0, 32)[None, None, None, :]
    q = tl.load((b + 34 * j + 2 + i).to(tl.pointer_type(tl.int8))).to(tl.float32)
    return q * _f16(b + 34 * j), 32 * j + i


@triton.jit
def _float(blk, DTYPE: tl.constexpr):
    """-> (R, S, 256) of a float type."""
    e = tl.arange(0, 256)[None, None, :]
    return tl.load(blk[:, :, None].to(tl.pointer_type(DTYPE)) + e).to(tl.float32), e


@triton.jit
def _x_at(xp, k, npp, HAS_NORM: tl.constexpr):
    """Inputs at element k of each super-block (times the norm weight when HAS_NORM)."""
    x = tl.load(xp + k)
    if HAS_NORM:
        x = x * tl.load(npp + k)
    return x


@triton.jit
def superblock_dots(blk, xp, npp, QT: tl.constexpr, HAS_NORM: tl.constexpr):
    """(R, S) dot products of each row's super-block with the inputs.

    ``xp``/``npp``: (R or 1, S) float32 pointers to each super-block's first input (and norm
    weight).
    """
    if QT == 12:
        w, k = _q4_k(blk)
        x = _x_at(xp[:, :, None, None, None], k, npp[:, :, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 2)
    elif QT == 13:
        w, k = _q5_k(blk)
        x = _x_at(xp[:, :, None, None, None], k, npp[:, :, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 2)
    elif QT == 14:
        w, k = _q6_k(blk)
        x = _x_at(xp[:, :, None, None, None, None], k, npp[:, :, None, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(tl.sum(w * x, 5), 4), 3), 2)
    elif QT == 8:
        w, k = _q8_0(blk)
        x = _x_at(xp[:, :, None, None], k, npp[:, :, None, None], HAS_NORM)
        out = tl.sum(tl.sum(w * x, 3), 2)
    else:
        w, k = _float(blk, tl.float32 if QT == 0 else (tl.float16 if QT == 1 else tl.bfloat16))
        out = tl.sum(w * _x_at(xp[:, :, None], k, npp[:, :, None], HAS_NORM), 2)
    return out


@triton.jit
def superblock_matrix(blk, QT: tl.constexpr):
    """(R, 256) weights of one super-block per row (``blk``: (R, 1)), in natural order."""
    R: tl.constexpr = blk.shape[0]
    if QT == 12:
        w, _ = _q4_k(blk)
    elif QT == 13:
        w, _ = _q5_k(blk)
    elif QT == 14:
        w, _ = _q6_k(blk)
    elif QT == 8:
        w, _ = _q8_0(blk)
    else:
        w, _ = _float(blk, tl.float32 if QT == 0 else (tl.float16 if QT == 1 else tl.bfloat16))
    return tl.reshape(w, (R, 256))

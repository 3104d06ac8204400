"""Triton device functions that dequantize GGML super-blocks in registers.

Every type is read in super-blocks of 256 elements (8 blocks of Q8_0, 256 floats for the
float types), so one kernel shape serves all of them. A tile function takes ``blk``, an
(S, R) tensor of uint8 pointers to super-block starts (S super-blocks of R weight rows),
and returns the float32 weights as a tile (A, S, R, ..., T) plus the element index ``k``
of each position within its super-block (broadcastable), so callers can fetch the
matching inputs. Element k = T a + t + (the middle axes' share): a (the first axis)
picks a group of T consecutive elements of a 32-element run and t (the last axis) one of
them. T is 4 where blocks are 16-byte aligned (Q4_K, Q5_K, floats) and 2 where they are
only 2-byte aligned (Q6_K: 210 bytes, Q8_0: 34), so that the weight and input loads get
the same vector width. The layouts follow ``gguf.quants`` (``dequant.py`` in torch).

The axis order steers Triton's layout: it vectorizes along the contiguous last axis and
then hands out a warp's 32 lanes along the remaining axes in index order, so lanes go to
(a) x (S) and warps to rows. One warp then reads a whole row (up to 2048 elements) in
one round, and a row's dot product is reduced inside its warp (shuffles, no shared
memory or barriers). Small loads (scales) are broadcast over the a axis so that they
share that layout instead of needing a conversion.

Callers clamp every pointer into the weight (no masks here): loads stay unconditional,
and results for clamped rows are dropped afterwards.
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
def _axes4(blk):
    """Block pointers and the a and t axes for tiles with 2 middle axes."""
    b = blk[None, :, :, None, None, None]
    a = tl.arange(0, 8)[:, None, None, None, None, None]
    t = tl.arange(0, 4)[None, None, None, None, None, :]
    return b, b + 0 * a, a, t


@triton.jit
def _q4_k(blk):
    """-> (8, S, R, 4 j, 2 n, 4): element 64j + 32n + 4a + t is nibble n of qs[32j + 4a + t]."""
    b, ba, a, t = _axes4(blk)
    j = tl.arange(0, 4)[None, None, None, :, None, None]
    n = tl.arange(0, 2)[None, None, None, None, :, None]
    sc, mn = _k_scale_min(ba, 2 * j + n)
    qs = tl.load(b + 16 + 32 * j + 4 * a + t).to(tl.int32)
    q = ((qs >> (4 * n)) & 15).to(tl.float32)
    return (_f16(ba) * sc) * q - _f16(ba + 2) * mn, 64 * j + 32 * n + 4 * a + t


@triton.jit
def _q5_k(blk):
    """Q4_K's layout plus a fifth bit: bit (2j + n) of qh[4a + t]."""
    b, ba, a, t = _axes4(blk)
    j = tl.arange(0, 4)[None, None, None, :, None, None]
    n = tl.arange(0, 2)[None, None, None, None, :, None]
    sub = 2 * j + n
    sc, mn = _k_scale_min(ba, sub)
    qh = tl.load(b + 16 + 4 * a + t).to(tl.int32)
    qs = tl.load(b + 48 + 32 * j + 4 * a + t).to(tl.int32)
    q = (((qs >> (4 * n)) & 15) | (((qh >> sub) & 1) << 4)).to(tl.float32)
    return (_f16(ba) * sc) * q - _f16(ba + 2) * mn, 64 * j + 32 * n + 4 * a + t


@triton.jit
def _q6_k(blk):
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
    return (_f16(ba + 208) * sc) * q.to(tl.float32), 128 * h + 64 * n + 32 * u + 2 * a + t


@triton.jit
def _axes3(blk, A: tl.constexpr):
    """Block pointers and the a and t axes (A groups of 32 / A) for tiles with 1 middle axis."""
    b = blk[None, :, :, None, None]
    a = tl.arange(0, A)[:, None, None, None, None]
    t = tl.arange(0, 32 // A)[None, None, None, None, :]
    return b, b + 0 * a, a, t


@triton.jit
def _q8_0(blk):
    """-> (16, S, R, 8 j, 2): 8 blocks of 34 bytes (f16 scale, 32 int8); element 32j + 2a + t."""
    b, ba, a, t = _axes3(blk, 16)
    j = tl.arange(0, 8)[None, None, None, :, None]
    q = tl.load((b + 34 * j + 2 + 2 * a + t).to(tl.pointer_type(tl.int8))).to(tl.float32)
    return q * _f16(ba + 34 * j), 32 * j + 2 * a + t


@triton.jit
def _float(blk, DTYPE: tl.constexpr):
    """-> (8, S, R, 8 c, 4) of a float type: element 32c + 4a + t."""
    b, _, a, t = _axes3(blk, 8)
    c = tl.arange(0, 8)[None, None, None, :, None]
    e = 32 * c + 4 * a + t
    return tl.load(b.to(tl.pointer_type(DTYPE)) + e).to(tl.float32), e


@triton.jit
def _x_at(xp, k, npp, HAS_NORM: tl.constexpr):
    """Inputs at element k of each super-block (times the norm weight when HAS_NORM)."""
    x = tl.load(xp + k)
    if HAS_NORM:
        x = x * tl.load(npp + k)
    return x


@triton.jit
def superblock_dots(blk, xp, npp, QT: tl.constexpr, HAS_NORM: tl.constexpr):
    """(S, R) dot products of each row's super-blocks with the inputs.

    ``xp``/``npp``: (S, R) float32 pointers to each super-block's first input (and norm
    weight) for each row.
    """
    if QT == 12:
        w, k = _q4_k(blk)
        x = _x_at(xp[None, :, :, None, None, None], k, npp[None, :, :, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(tl.sum(w * x, 5), 4), 3), 0)
    elif QT == 13:
        w, k = _q5_k(blk)
        x = _x_at(xp[None, :, :, None, None, None], k, npp[None, :, :, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(tl.sum(w * x, 5), 4), 3), 0)
    elif QT == 14:
        w, k = _q6_k(blk)
        x = _x_at(xp[None, :, :, None, None, None, None], k,
                  npp[None, :, :, None, None, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(tl.sum(tl.sum(w * x, 6), 5), 4), 3), 0)
    elif QT == 8:
        w, k = _q8_0(blk)
        x = _x_at(xp[None, :, :, None, None], k, npp[None, :, :, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 0)
    else:
        w, k = _float(blk, tl.float32 if QT == 0 else (tl.float16 if QT == 1 else tl.bfloat16))
        x = _x_at(xp[None, :, :, None, None], k, npp[None, :, :, None, None], HAS_NORM)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 0)
    return out


@triton.jit
def superblock_matrix(blk, QT: tl.constexpr):
    """(256, R) weights of one super-block per row (``blk``: (1, R)), in natural order:
    the B operand of a ``tl.dot``."""
    R: tl.constexpr = blk.shape[1]
    if QT == 12:
        w, _ = _q4_k(blk)
        w = tl.permute(w, (3, 4, 0, 5, 1, 2))  # (j, n, a, t, 1, R)
    elif QT == 13:
        w, _ = _q5_k(blk)
        w = tl.permute(w, (3, 4, 0, 5, 1, 2))
    elif QT == 14:
        w, _ = _q6_k(blk)
        w = tl.permute(w, (3, 4, 5, 0, 6, 1, 2))  # (h, n, u, a, t, 1, R)
    elif QT == 8:
        w, _ = _q8_0(blk)
        w = tl.permute(w, (3, 0, 4, 1, 2))  # (j, a, t, 1, R)
    else:
        w, _ = _float(blk, tl.float32 if QT == 0 else (tl.float16 if QT == 1 else tl.bfloat16))
        w = tl.permute(w, (3, 0, 4, 1, 2))
    return tl.reshape(w, (256, R))

"""Triton device functions that dequantize GGML super-blocks in registers.

Every type is read in super-blocks of 256 elements (8 blocks of Q8_0, 256 floats for the
float types), so one kernel shape serves all of them. A tile function takes ``blk``, an
(S, R) tensor of uint8 pointers to super-block starts (S super-blocks of R weight rows),
and returns the float32 weights as a tile (A, S, R, ..., T) plus the element index ``k``
of each position within its super-block (broadcastable), so callers can fetch the
matching inputs. Element k = T a + t + (the middle axes' share): a (the first axis)
picks a group of T consecutive elements of a run of A T (32, or 16 for the 4-bit types of
32-element blocks: a block's low or high nibbles) and t (the last axis) one of them. T is 4 where blocks are 4-byte aligned (Q2_K, Q4_K, Q5_K, floats) and 2 where they
are only 2-byte aligned (Q3_K: 110 bytes, Q6_K: 210, Q8_0 and the 32-element block types),
so that the weight and input loads get the same vector width. The layouts follow
``gguf.quants`` (``dequant.py`` in torch); the tiles are in ``triton_tile_kquants``,
``triton_tile_blocks32`` and ``triton_tile_grids`` (whose types also read a grid table
through the ``iq_grid`` pointer every kernel takes), and all but Q6_K, Q8_0 and the floats
have the same shape (A, S, R, ., ., T), summed and ordered alike here.

The axis order steers Triton's layout: it vectorizes along the contiguous last axis and
then hands out a warp's 32 lanes along the remaining axes in index order, so lanes go to
(a) x (S) and warps to rows. One warp then reads a whole row (up to 2048 elements) in
one round, and a row's dot product is reduced inside its warp (shuffles, no shared
memory or barriers). Small loads (scales) are broadcast over the a axis so that they
share that layout instead of needing a conversion.

Callers clamp every pointer into the weight (no masks here): loads stay unconditional,
and results for clamped rows are dropped afterwards. A row that is not whole super-blocks
(2880 wide: 11 and a quarter) has its last super-block read from 256 elements before the
row's end, which the blocks of 32 elements allow, and the elements it shares with the
super-block before it masked out of the inputs (``superblock_dots``' MASKED) or the results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as QType

from autotune.cache_runtime.dequant import BLOCK_SIZES
from autotune.cache_runtime.iq_grids import GRID_TYPES, grid_table
from autotune.cache_runtime.triton_tile_blocks32 import iq4_nl, iq4_xs, mxfp4, q4_0, q4_1, q5_0, q5_1, q8_0
from autotune.cache_runtime.triton_tile_grids import iq1_m, iq1_s, iq2_s, iq2_xs, iq2_xxs, iq3_s, iq3_xxs
from autotune.cache_runtime.triton_tile_kquants import q2_k, q3_k, q4_k, q5_k, q6_k

# GGML type ids, as constexpr codes for the kernels: every type the runtime reads.
QTYPE_CODES = {name: int(QType[name]) for name in BLOCK_SIZES}
# Bytes of 256 elements of each type.
SUPERBLOCK_BYTES = {name: 256 // elements * nbytes for name, (elements, nbytes) in BLOCK_SIZES.items()}
# Size A of each type's tile's a axis: a warp's 32 lanes take 32 / A super-blocks a round.
TILE_GROUPS = {name: 16 if name in ("Q3_K", "Q6_K", "Q8_0") else 8 for name in BLOCK_SIZES}


def grid_arg(qtype: str, device: torch.device) -> torch.Tensor | None:
    """The kernels' ``iq_grid`` argument: the grid types' table on ``device``, else None (a
    constexpr to Triton, so the other types' kernels take no extra argument)."""
    return grid_table(qtype, device) if qtype in GRID_TYPES else None


@triton.jit
def _float(blk, QT: tl.constexpr):
    """-> (8, S, R, 8 c, 4) of a float type (F32, F16 or BF16): element 32c + 4a + t."""
    DTYPE: tl.constexpr = tl.float32 if QT == 0 else (tl.float16 if QT == 1 else tl.bfloat16)
    b = blk[None, :, :, None, None]
    a = tl.arange(0, 8)[:, None, None, None, None]
    t = tl.arange(0, 4)[None, None, None, None, :]
    c = tl.arange(0, 8)[None, None, None, :, None]
    e = 32 * c + 4 * a + t
    return tl.load(b.to(tl.pointer_type(DTYPE)) + e).to(tl.float32), e


@triton.jit
def _tile6(blk, iq_grid, QT: tl.constexpr):
    """The tile (A, S, R, ., ., T) of the types with 2 middle axes (``iq_grid``: the iq_grid
    types' table, unused by the others)."""
    if QT == 12:
        w, k = q4_k(blk)
    elif QT == 13:
        w, k = q5_k(blk)
    elif QT == 10:
        w, k = q2_k(blk)
    elif QT == 11:
        w, k = q3_k(blk)
    elif QT == 2:
        w, k = q4_0(blk)
    elif QT == 3:
        w, k = q4_1(blk)
    elif QT == 6:
        w, k = q5_0(blk)
    elif QT == 7:
        w, k = q5_1(blk)
    elif QT == 20:
        w, k = iq4_nl(blk)
    elif QT == 23:
        w, k = iq4_xs(blk)
    elif QT == 16:
        w, k = iq2_xxs(blk, iq_grid)
    elif QT == 17:
        w, k = iq2_xs(blk, iq_grid)
    elif QT == 22:
        w, k = iq2_s(blk, iq_grid)
    elif QT == 18:
        w, k = iq3_xxs(blk, iq_grid)
    elif QT == 21:
        w, k = iq3_s(blk, iq_grid)
    elif QT == 19:
        w, k = iq1_s(blk, iq_grid)
    elif QT == 29:
        w, k = iq1_m(blk, iq_grid)
    else:
        tl.static_assert(QT == 39, "no Triton tile for this GGML type")
        w, k = mxfp4(blk)
    return w, k


@triton.jit
def _x_at(xp, k, npp, lo, HAS_NORM: tl.constexpr, MASKED: tl.constexpr):
    """Inputs at element k of each super-block (times the norm weight when HAS_NORM); with
    MASKED, 0 below element ``lo`` of each super-block."""
    if MASKED:
        x = tl.load(xp + k, mask=k >= lo, other=0.0)
    else:
        x = tl.load(xp + k)
    if HAS_NORM:
        x = x * tl.load(npp + k)
    return x


@triton.jit
def superblock_dots(blk, xp, npp, lo, iq_grid, QT: tl.constexpr, HAS_NORM: tl.constexpr, MASKED: tl.constexpr):
    """(S, R) dot products of each row's super-blocks with the inputs.

    ``xp``/``npp``: (S, R) float32 pointers to each super-block's first input (and norm
    weight) for each row; ``iq_grid``: the grid types' table (``grid_arg``). With MASKED, the
    elements of a super-block below its ``lo`` (S, R) count as 0: a row's last super-block,
    moved back to end with the row, overlaps the one before it there (``triton_gemv`` explains).
    """
    if QT == 14:
        w, k = q6_k(blk)
        x = _x_at(xp[None, :, :, None, None, None, None], k, npp[None, :, :, None, None, None, None],
                  lo[None, :, :, None, None, None, None], HAS_NORM, MASKED)
        out = tl.sum(tl.sum(tl.sum(tl.sum(tl.sum(w * x, 6), 5), 4), 3), 0)
    elif QT == 8:
        w, k = q8_0(blk)
        x = _x_at(xp[None, :, :, None, None], k, npp[None, :, :, None, None], lo[None, :, :, None, None],
                  HAS_NORM, MASKED)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 0)
    elif QT == 0 or QT == 1 or QT == 30:
        w, k = _float(blk, QT)
        x = _x_at(xp[None, :, :, None, None], k, npp[None, :, :, None, None], lo[None, :, :, None, None],
                  HAS_NORM, MASKED)
        out = tl.sum(tl.sum(tl.sum(w * x, 4), 3), 0)
    else:
        w, k = _tile6(blk, iq_grid, QT)
        x = _x_at(xp[None, :, :, None, None, None], k, npp[None, :, :, None, None, None],
                  lo[None, :, :, None, None, None], HAS_NORM, MASKED)
        out = tl.sum(tl.sum(tl.sum(tl.sum(w * x, 5), 4), 3), 0)
    return out


@triton.jit
def superblock_matrix(blk, iq_grid, QT: tl.constexpr):
    """(256, R) weights of one super-block per row (``blk``: (1, R)), in natural order:
    the B operand of a ``tl.dot``; ``iq_grid``: the grid types' table (``grid_arg``)."""
    R: tl.constexpr = blk.shape[1]
    if QT == 14:
        w, _ = q6_k(blk)
        w = tl.permute(w, (3, 4, 5, 0, 6, 1, 2))  # (h, n, u, a, t, 1, R)
    elif QT == 8:
        w, _ = q8_0(blk)
        w = tl.permute(w, (3, 0, 4, 1, 2))  # (j, a, t, 1, R)
    elif QT == 0 or QT == 1 or QT == 30:
        w, _ = _float(blk, QT)
        w = tl.permute(w, (3, 0, 4, 1, 2))
    else:
        w, _ = _tile6(blk, iq_grid, QT)
        w = tl.permute(w, (3, 4, 0, 5, 1, 2))  # (middle 0, middle 1, a, t, 1, R)
    return tl.reshape(w, (256, R))

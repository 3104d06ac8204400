"""Numpy encoders for the grid types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S,
for synthetic models.

Each group of 16 or 32 weights has a scale s under the block's f16 d, d (0.5 + s) step
(IQ2_*: step 1/4, IQ3_XXS: 1/2, IQ3_S and IQ1_*: 2, that is d (2 s + 1)), that multiplies
rows of the type's grid (the grids are gguf's, ``gguf.quants``). The IQ2 and IQ3 grids hold
magnitudes, with signs apart: IQ2_S and IQ3_S keep a bit per weight; IQ2_XXS, IQ2_XS and
IQ3_XXS take 7 sign bits per 8 weights, the eighth making the count of negative ones even
(ggml's ``ksigns_iq2xs``), so where the count is odd the smallest weight's sign is given up,
as llama.cpp's quantizer does. The IQ1 grids hold -1, 0 and 1, shifted by plus or minus 1/8
(one shift per 32 weights in IQ1_S, per 8 in IQ1_M: whichever fits better). The scale comes
from the largest magnitude and each row is the nearest grid row: simple rules, not
llama.cpp's search, and no importance matrix. The layouts are llama.cpp's (ggml-common.h),
as ``gguf.quants``' decoders read them (the tests check the round trip).
"""

from __future__ import annotations

import numpy as np
from gguf import quants as gguf_quants

QK_K = 256
# rows x grid rows distances computed at a time: small enough to stay in cache (4096 rows
# against IQ2_XXS's 256-row grid, 512 against IQ1's 2048)
CHUNK_DISTANCES = 1 << 20
IQ1_DELTA = float(gguf_quants.IQ1_S.delta)


def gguf_grid(source: type) -> np.ndarray:
    """(rows, width) float32: the grid of ``source``, a ``gguf.quants`` grid type class."""
    source.init_grid()
    return source.grid.reshape(source.grid_shape)


def _blocks(values: np.ndarray) -> np.ndarray:
    """Float values -> float32 blocks (n, 256)."""
    return np.asarray(values, dtype=np.float32).reshape(-1, QK_K)


def _half_bytes(d: np.ndarray) -> np.ndarray:
    """f16 (n,) -> its bytes (n, 2)."""
    return d.view(np.uint8).reshape(-1, 2)


def _nearest_rows(target: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the nearest grid row to each row of ``target``."""
    g2 = (grid * grid).sum(axis=1)
    out = np.empty(target.shape[0], dtype=np.int64)
    chunk = max(1, CHUNK_DISTANCES // grid.shape[0])
    for i in range(0, target.shape[0], chunk):
        out[i : i + chunk] = np.argmin(g2[None, :] - 2 * target[i : i + chunk] @ grid.T, axis=1)
    return out


def _even_signs(groups: np.ndarray) -> np.ndarray:
    """(..., 8) values -> their 7-bit sign indices, the eighth sign given by parity (the
    smallest value's sign flipped where the count of negative ones is odd)."""
    negative = groups < 0
    odd = negative.sum(axis=-1) % 2 == 1
    smallest = np.abs(groups).argmin(axis=-1)
    flip = odd[..., None] & (np.arange(8) == smallest[..., None])
    negative ^= flip
    return (negative[..., :7] << np.arange(7)).sum(axis=-1).astype(np.uint32)


def _pack_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """(n, m) fields of ``bits`` bits (1, 2 or 4) -> (n, m bits / 8) bytes, low bits first:
    field j at bit bits (j % (8 / bits)) of byte j // (8 / bits)."""
    per_byte = 8 // bits
    grouped = fields.astype(np.uint8).reshape(fields.shape[0], -1, per_byte)
    return (grouped << (bits * np.arange(per_byte, dtype=np.uint8))).sum(axis=-1, dtype=np.uint8)


def _group_scales(groups: np.ndarray, grid_max: float, step: float, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, g, k) values -> the f16 d (n,) and scales s (n, g) in 0..top: d (0.5 + s) step ~ amax / grid_max."""
    ideal = np.abs(groups).max(axis=-1) / grid_max
    d = (ideal.max(axis=1) / ((top + 0.5) * step)).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(d32 > 0, np.rint(ideal / (d32 * step) - 0.5), 0).clip(0, top)
    return d, s.astype(np.uint32)


def _scaled(groups: np.ndarray, d: np.ndarray, s: np.ndarray, step: float) -> np.ndarray:
    """(n, g, k) values over their group's multiplier d (0.5 + s) step (0 where it is 0)."""
    db = (d.astype(np.float32)[:, None] * (0.5 + s.astype(np.float32)) * step)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(db > 0, groups / db, 0).astype(np.float32)


def _fit_grid(blocks: np.ndarray, source: type, step: float, groups: int) -> tuple[np.ndarray, ...]:
    """IQ2 / IQ3 magnitudes: the f16 d (n,), 4-bit scales (n, groups) and the nearest grid
    rows (n, 256 / width) to the weights' magnitudes over their group's multiplier."""
    grid = gguf_grid(source)
    sub = np.abs(blocks).reshape(blocks.shape[0], groups, -1)
    d, s = _group_scales(sub, float(grid.max()), step, 15)
    target = _scaled(sub, d, s, step).reshape(-1, grid.shape[1])
    return d, s, _nearest_rows(target, grid).reshape(blocks.shape[0], -1)


def _fit_iq1(blocks: np.ndarray, groups: int, shift_width: int) -> tuple[np.ndarray, ...]:
    """IQ1: the f16 d (n,), 3-bit scales (n, groups), grid rows (n, 32) and, per
    ``shift_width`` weights, whether their shift is -1/8 (else +1/8), the one of smaller
    squared error (n, 256 / shift_width)."""
    grid = gguf_grid(gguf_quants.IQ1_S)
    n = blocks.shape[0]
    sub = blocks.reshape(n, groups, -1)
    d, s = _group_scales(sub, 1 + IQ1_DELTA, 2.0, 7)
    target = _scaled(sub, d, s, 2.0).reshape(-1, 8)
    fits = []
    for delta in (IQ1_DELTA, -IQ1_DELTA):
        index = _nearest_rows(target - delta, grid)
        error = ((grid[index] + delta - target) ** 2).sum(axis=-1)
        fits.append((index.reshape(n, -1), error.reshape(n, -1, shift_width // 8).sum(axis=-1)))
    (up, up_error), (down, down_error) = fits
    negative = down_error < up_error
    return d, s, np.where(np.repeat(negative, shift_width // 8, axis=1), down, up), negative


def _xxs_words(blocks: np.ndarray, s: np.ndarray) -> np.ndarray:
    """IQ2_XXS / IQ3_XXS: per 32 weights the uint32 of their 4 x 7 sign bits and the scale (top 4 bits)."""
    signs = _even_signs(blocks.reshape(blocks.shape[0], 8, 4, 8))
    return (signs << (7 * np.arange(4, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32) | (s << 28)


def quantize_iq2_xxs(values: np.ndarray) -> np.ndarray:
    """66 bytes a block: f16 d; per 32 weights 4 grid indices (rows of 8), then the uint32 of
    their 4 x 7 sign bits and the scale (top 4 bits)."""
    blocks = _blocks(values)
    d, s, index = _fit_grid(blocks, gguf_quants.IQ2_XXS, 0.25, 8)
    n = blocks.shape[0]
    words = _xxs_words(blocks, s)[..., None].view(np.uint8)
    per_sub = np.concatenate([index.reshape(n, 8, 4).astype(np.uint8), words], axis=-1)
    return np.concatenate([_half_bytes(d), per_sub.reshape(n, 64)], axis=1)


def quantize_iq3_xxs(values: np.ndarray) -> np.ndarray:
    """98 bytes a block: f16 d, 64 grid indices (rows of 4), 8 uint32 of 4 x 7 sign bits and
    the scale (top 4 bits)."""
    blocks = _blocks(values)
    d, s, index = _fit_grid(blocks, gguf_quants.IQ3_XXS, 0.5, 8)
    return np.concatenate([_half_bytes(d), index.astype(np.uint8), _xxs_words(blocks, s).view(np.uint8)], axis=1)


def quantize_iq2_xs(values: np.ndarray) -> np.ndarray:
    """74 bytes a block: f16 d; 32 uint16 of a 9-bit grid index (rows of 8) under its row's
    7 sign bits; 16 scales (one per 16 weights) in nibbles."""
    blocks = _blocks(values)
    d, s, index = _fit_grid(blocks, gguf_quants.IQ2_XS, 0.25, 16)
    n = blocks.shape[0]
    qs = (index.astype(np.uint32) | (_even_signs(blocks.reshape(n, 32, 8)) << 9)).astype(np.uint16)
    return np.concatenate([_half_bytes(d), qs.view(np.uint8), _pack_fields(s, 4)], axis=1)


def quantize_iq2_s(values: np.ndarray) -> np.ndarray:
    """82 bytes a block: f16 d, 32 low bytes of 10-bit grid indices (rows of 8), 32 bytes of
    sign bits, 8 bytes of the indices' high 2 bits, 16 scales (one per 16 weights) in nibbles."""
    blocks = _blocks(values)
    d, s, index = _fit_grid(blocks, gguf_quants.IQ2_S, 0.25, 16)
    return np.concatenate([_half_bytes(d), (index & 0xFF).astype(np.uint8), _pack_fields(blocks < 0, 1),
                           _pack_fields(index >> 8, 2), _pack_fields(s, 4)], axis=1)


def quantize_iq3_s(values: np.ndarray) -> np.ndarray:
    """110 bytes a block: f16 d, 64 low bytes of 9-bit grid indices (rows of 4), 8 bytes of
    their ninth bits, 32 bytes of sign bits, 8 scales (one per 32 weights) in nibbles."""
    blocks = _blocks(values)
    d, s, index = _fit_grid(blocks, gguf_quants.IQ3_S, 2.0, 8)
    return np.concatenate([_half_bytes(d), (index & 0xFF).astype(np.uint8), _pack_fields(index >> 8, 1),
                           _pack_fields(blocks < 0, 1), _pack_fields(s, 4)], axis=1)


def quantize_iq1_s(values: np.ndarray) -> np.ndarray:
    """50 bytes a block: f16 d, 32 low bytes of 11-bit grid indices (rows of 8), then per 32
    weights a uint16 of their 4 rows' high 3 index bits, the 3-bit scale (bit 12) and the
    shift's sign (bit 15)."""
    blocks = _blocks(values)
    d, s, index, negative = _fit_iq1(blocks, 8, 32)
    high = ((index.reshape(-1, 8, 4) >> 8) << (3 * np.arange(4))).sum(axis=-1)
    qh = (high | (s << 12) | (negative.astype(np.int64) << 15)).astype(np.uint16)
    return np.concatenate([_half_bytes(d), (index & 0xFF).astype(np.uint8), qh.view(np.uint8)], axis=1)


def quantize_iq1_m(values: np.ndarray) -> np.ndarray:
    """56 bytes a block: 32 low bytes of 11-bit grid indices (rows of 8); a nibble per row of
    its high 3 index bits and the shift's sign (bit 3); 4 uint16 of 4 x 3-bit scales (one per
    16 weights), whose top nibbles are the f16 d's, lowest first."""
    blocks = _blocks(values)
    d, s, index, negative = _fit_iq1(blocks, 16, 8)
    qh = _pack_fields((index >> 8) | (negative.astype(np.int64) << 3), 4)
    d_nibbles = (d.view(np.uint16)[:, None] >> (4 * np.arange(4, dtype=np.uint16))) & 0xF
    scales = (s.reshape(-1, 4, 4) << (3 * np.arange(4, dtype=np.uint32))).sum(axis=-1)
    words = (scales | (d_nibbles.astype(np.uint32) << 12)).astype(np.uint16)
    return np.concatenate([(index & 0xFF).astype(np.uint8), qh, words.view(np.uint8)], axis=1)

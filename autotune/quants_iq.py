"""Numpy encoders for two of the grid types, IQ2_XXS and IQ3_XXS, for synthetic models.

Each 32 weights share a 4-bit scale s under the block's f16 d: IQ2_XXS scales its grid
rows of 8 by d (0.5 + s) / 4, IQ3_XXS its rows of 4 by d (0.5 + s) / 2. Each 8 weights
take 7 sign bits; the eighth sign makes the count of negative ones even (ggml's
``ksigns_iq2xs``), so where the count is odd the smallest weight's sign is given up, as
llama.cpp's quantizer does. The scale comes from the largest magnitude and each row is
the nearest grid row (the grids are gguf's, ``gguf.quants``): simple rules, not
llama.cpp's search, and no importance matrix. The layouts follow ``gguf.quants``' decoders
(the tests check the round trip).
"""

from __future__ import annotations

import numpy as np
from gguf import quants as gguf_quants

QK_K = 256
CHUNK_ROWS = 4096  # grid rows searched at a time (memory: rows x grid size floats)


def gguf_grid(source: type) -> np.ndarray:
    """(rows, width) float32: the grid of ``source``, a ``gguf.quants`` grid type class."""
    source.init_grid()
    return source.grid.reshape(source.grid_shape)


def _nearest_rows(target: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the nearest grid row to each row of ``target``."""
    g2 = (grid * grid).sum(axis=1)
    out = np.empty(target.shape[0], dtype=np.int64)
    for i in range(0, target.shape[0], CHUNK_ROWS):
        part = target[i : i + CHUNK_ROWS]
        out[i : i + CHUNK_ROWS] = np.argmin(g2[None, :] - 2 * part @ grid.T, axis=1)
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


def _scales(sub: np.ndarray, grid_max: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 32) values -> the f16 d (n,) and 4-bit scales (n, 8): d (0.5 + s) step ~ amax / grid_max."""
    ideal = np.abs(sub).max(axis=-1) / grid_max
    d = (ideal.max(axis=1) / (15.5 * step)).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(d32 > 0, np.rint(ideal / (d32 * step) - 0.5), 0).clip(0, 15)
    return d, s.astype(np.uint32)


def _encode(values: np.ndarray, source: type, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The f16 d (n,), grid indices (n, 8, 32 / width) and sign-and-scale words (n, 8)."""
    grid = gguf_grid(source)
    width = grid.shape[1]
    sub = np.asarray(values, dtype=np.float32).reshape(-1, 8, 32)
    d, s = _scales(sub, float(grid.max()), step)
    db = d.astype(np.float32)[:, None] * (0.5 + s.astype(np.float32)) * step
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.where(db[..., None] > 0, np.abs(sub) / db[..., None], 0)
    index = _nearest_rows(target.reshape(-1, width), grid).reshape(sub.shape[0], 8, 32 // width)
    signs = _even_signs(sub.reshape(-1, 8, 4, 8))
    words = (signs << (7 * np.arange(4, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32) | (s << 28)
    return d, index, words


def quantize_iq2_xxs(values: np.ndarray) -> np.ndarray:
    """66 bytes a block: f16 d; per 32 weights 4 grid indices, then the uint32 of their
    4 x 7 sign bits and the scale (top 4 bits)."""
    d, index, words = _encode(values, gguf_quants.IQ2_XXS, 0.25)
    n = d.shape[0]
    per_sub = np.concatenate([index.astype(np.uint8), words[..., None].view(np.uint8)], axis=-1)
    return np.concatenate([d.view(np.uint8).reshape(n, 2), per_sub.reshape(n, 64)], axis=1)


def quantize_iq3_xxs(values: np.ndarray) -> np.ndarray:
    """98 bytes a block: f16 d, 64 grid indices (rows of 4), 8 uint32 of 4 x 7 sign bits and
    the scale (top 4 bits)."""
    d, index, words = _encode(values, gguf_quants.IQ3_XXS, 0.5)
    n = d.shape[0]
    return np.concatenate([d.view(np.uint8).reshape(n, 2), index.astype(np.uint8).reshape(n, 64),
                           words.view(np.uint8).reshape(n, 32)], axis=1)

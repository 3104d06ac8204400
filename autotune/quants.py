"""Numpy encoders for the GGML block types the project writes: Q4_K, Q5_K, Q6_K, Q8_0.

The ``gguf`` package decodes every type but encodes only a few; these encoders fill the
gap for synthetic models and tests. They follow llama.cpp's block layouts exactly
(checked against ``gguf.quants.dequantize`` in the tests) but use a simple min/max
quantization rule instead of llama.cpp's error search: good values, not the best ones.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import quants as gguf_quants

QK_K = 256


def _to_blocks(values: np.ndarray, block: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.size % block:
        raise ValueError(f"{values.size} values do not fill whole blocks of {block}")
    return values.reshape(-1, block)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and mins per block into llama.cpp's 12-byte K-quant layout."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    low_d = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    low_m = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    mixed = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([low_d, low_m, mixed], axis=1)


def _affine_subblocks(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Super-block scale/min and 6-bit sub-block scales/mins and codes for Q4_K / Q5_K."""
    sub = blocks.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    scale = (hi - lo) / levels
    offset = -lo
    d = scale.max(axis=1) / 63
    dmin = offset.max(axis=1) / 63
    d16 = d.astype(np.float16).astype(np.float32)
    dmin16 = dmin.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d16[:, None] > 0, np.rint(scale / d16[:, None]), 0).clip(0, 63)
        mn = np.where(dmin16[:, None] > 0, np.rint(offset / dmin16[:, None]), 0).clip(0, 63)
        step = d16[:, None] * sc
        q = np.where(
            step[..., None] > 0,
            np.rint((sub + (dmin16[:, None] * mn)[..., None]) / step[..., None]),
            0,
        )
    return d16, dmin16, sc, mn, q.clip(0, levels).astype(np.uint8)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Sub-blocks 2c and 2c+1 share 32 bytes: low and high nibble."""
    q = q.reshape(-1, 4, 2, 32)
    return (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)


def quantize_q4_k(values: np.ndarray) -> np.ndarray:
    blocks = _to_blocks(values, QK_K)
    d, dmin, sc, mn, q = _affine_subblocks(blocks, 15)
    return np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_k_scales(sc, mn), _pack_nibbles(q & 0x0F)], axis=1
    )


def quantize_q5_k(values: np.ndarray) -> np.ndarray:
    blocks = _to_blocks(values, QK_K)
    d, dmin, sc, mn, q = _affine_subblocks(blocks, 31)
    high = (q >> 4) & 1  # (n, 8 sub-blocks, 32)
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    return np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_k_scales(sc, mn), qh, _pack_nibbles(q & 0x0F)],
        axis=1,
    )


def quantize_q6_k(values: np.ndarray) -> np.ndarray:
    blocks = _to_blocks(values, QK_K)
    groups = blocks.reshape(-1, 16, 16)
    scale = np.abs(groups).max(axis=2) / 31
    d = (scale.max(axis=1) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-128, 127)
        step = d[:, None] * sc
        q = np.where(step[..., None] > 0, np.rint(groups / step[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low = (q & 0x0F).reshape(-1, 2, 2, 64)
    ql = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(-1, 128)
    high = (q >> 4).reshape(-1, 2, 4, 32)
    shifts = (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]
    qh = (high << shifts).sum(axis=2, dtype=np.uint8).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=1)


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(np.asarray(values, dtype=np.float32).reshape(-1, 32), QType.Q8_0)


ENCODERS = {
    QType.Q4_K: quantize_q4_k,
    QType.Q5_K: quantize_q5_k,
    QType.Q6_K: quantize_q6_k,
    QType.Q8_0: quantize_q8_0,
}


def quantize(values: np.ndarray, qtype: QType) -> np.ndarray:
    """Encode float values (a multiple of the block size) into raw GGML blocks, shape (n, bytes)."""
    if qtype == QType.F32:
        return np.asarray(values, dtype=np.float32).reshape(-1, 1).view(np.uint8)
    if qtype == QType.F16:
        return np.asarray(values, dtype=np.float16).reshape(-1, 1).view(np.uint8)
    try:
        return ENCODERS[qtype](values)
    except KeyError:
        raise ValueError(f"no encoder for {qtype.name}") from None

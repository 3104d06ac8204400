"""Numpy encoders for the GGML block types the project writes.

The ``gguf`` package decodes every type but encodes only a few (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
MXFP4: used as they are); these encoders fill the gap for synthetic models and tests: Q2_K,
Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS (the grid types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
IQ3_XXS and IQ3_S in ``quants_iq``). They follow llama.cpp's block layouts exactly
(checked against ``gguf.quants.dequantize`` in the tests) but use a simple min/max
quantization rule instead of llama.cpp's error search: good values, not the best ones.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import quants as gguf_quants

from autotune.quants_iq import (quantize_iq1_m, quantize_iq1_s, quantize_iq2_s, quantize_iq2_xs, quantize_iq2_xxs,
                                quantize_iq3_s, quantize_iq3_xxs)

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


_IQ4_VALUES = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.float32)


def _iq4_codes(groups: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The nearest IQ4 code (0..15) of each value of ``groups`` (n, 32) at scales ``step`` (n, 1)."""
    return np.abs(step[..., None] * _IQ4_VALUES - groups[..., None]).argmin(axis=-1).astype(np.uint8)


def _pack_halves(q: np.ndarray) -> np.ndarray:
    """(n, 32) nibbles -> 16 bytes: element m in the low nibble of byte m, m + 16 in the high."""
    return q[:, :16] | (q[:, 16:] << 4)


def _signed_extreme(groups: np.ndarray) -> np.ndarray:
    """Each row's value of largest magnitude, sign kept (n, 1): scaled to -127, the widest code."""
    return np.take_along_axis(groups, np.abs(groups).argmax(axis=1)[:, None], axis=1)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """(n, 256) codes 0..3 -> 64 bytes: element 128h + 32s + l is bits 2s.. of byte 32h + l."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8).reshape(-1, 64)


def quantize_q2_k(values: np.ndarray) -> np.ndarray:
    """16 groups of 16: x = d sc q - dmin m, q in 0..3, 4-bit sc and m."""
    groups = _to_blocks(values, QK_K).reshape(-1, 16, 16)
    lo = np.minimum(groups.min(axis=2), 0.0)
    scale, offset = (groups.max(axis=2) - lo) / 3, -lo
    d = (scale.max(axis=1) / 15).astype(np.float16).astype(np.float32)
    dmin = (offset.max(axis=1) / 15).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 15)
        mn = np.where(dmin[:, None] > 0, np.rint(offset / dmin[:, None]), 0).clip(0, 15)
        step = (d[:, None] * sc)[..., None]
        q = np.where(step > 0, np.rint((groups + (dmin[:, None] * mn)[..., None]) / step), 0).clip(0, 3)
    scales = sc.astype(np.uint8) | (mn.astype(np.uint8) << 4)
    return np.concatenate([scales, _pack_2bit(q), _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def quantize_q3_k(values: np.ndarray) -> np.ndarray:
    """16 groups of 16: x = d (u - 32) (c - 4), u 6 bits, c 3 bits (2 in qs, 1 in hmask); each
    group's value of largest magnitude maps to c - 4 = -4, the widest code."""
    groups = _to_blocks(values, QK_K).reshape(-1, 16, 16)
    scale = -_signed_extreme(groups.reshape(-1, 16)).reshape(-1, 16) / 4  # the extreme maps to code -4
    d = (np.abs(scale).max(axis=1) / 31).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-32, 31)
        step = (d[:, None] * sc)[..., None]
        c = (np.where(step != 0, np.rint(groups / step), 0).clip(-4, 3) + 4).astype(np.uint8).reshape(-1, 8, 32)
    hmask = ((c >> 2) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    # scale i: its low nibble in byte i % 8 (shifted 4 (i // 8)), its high 2 bits in byte 8 + i % 4
    u = (sc + 32).astype(np.uint8)
    low = (u[:, :8] & 0x0F) | ((u[:, 8:] & 0x0F) << 4)
    high = (u >> 4).reshape(-1, 4, 4)
    high = (high << (2 * np.arange(4, dtype=np.uint8))[None, :, None]).sum(axis=1, dtype=np.uint8)
    return np.concatenate([hmask, _pack_2bit(c & 3), low, high, _f16_bytes(d)], axis=1)


def quantize_iq4_nl(values: np.ndarray) -> np.ndarray:
    blocks = _to_blocks(values, 32)
    d = (-_signed_extreme(blocks) / 127).astype(np.float16)
    return np.concatenate([d.view(np.uint8), _pack_halves(_iq4_codes(blocks, d.astype(np.float32)))], axis=1)


def quantize_iq4_xs(values: np.ndarray) -> np.ndarray:
    """8 sub-blocks of 32: x = d (u - 32) codebook(q), u 6 bits (low nibbles, then high 2 bits)."""
    sub = _to_blocks(values, QK_K).reshape(-1, 8, 32)
    scale = -_signed_extreme(sub.reshape(-1, 32)).reshape(-1, 8) / 127
    d = (np.abs(scale).max(axis=1) / 31).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-32, 31)
    q = _iq4_codes(sub.reshape(-1, 32), (d[:, None] * ls).reshape(-1, 1))
    u = (ls + 32).astype(np.uint16)
    scales_h = ((u >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1, dtype=np.uint16)
    scales_l = ((u[:, 0::2] & 0x0F) | ((u[:, 1::2] & 0x0F) << 4)).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), scales_h.reshape(-1, 1).view(np.uint8), scales_l,
                           _pack_halves(q).reshape(-1, 128)], axis=1)


def _gguf_encoder(qtype: QType, block: int):
    def encode(values: np.ndarray) -> np.ndarray:
        return gguf_quants.quantize(np.asarray(values, dtype=np.float32).reshape(-1, block), qtype)

    return encode


ENCODERS = {
    QType.Q2_K: quantize_q2_k,
    QType.Q3_K: quantize_q3_k,
    QType.Q4_K: quantize_q4_k,
    QType.Q5_K: quantize_q5_k,
    QType.Q6_K: quantize_q6_k,
    QType.IQ4_NL: quantize_iq4_nl,
    QType.IQ4_XS: quantize_iq4_xs,
    QType.IQ2_XXS: quantize_iq2_xxs,
    QType.IQ3_XXS: quantize_iq3_xxs,
    QType.IQ3_S: quantize_iq3_s,
    QType.IQ2_XS: quantize_iq2_xs,
    QType.IQ2_S: quantize_iq2_s,
    QType.IQ1_S: quantize_iq1_s,
    QType.IQ1_M: quantize_iq1_m,
} | {qtype: _gguf_encoder(qtype, 32) for qtype in (QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1,
                                                   QType.MXFP4)}


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

"""Torch dequantizers of the grid types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S.

Each follows its ``gguf.quants`` class operation for operation (the same float32 bits on
the CPU): a scale per sub-block times rows of the type's grid (``iq_grids``), with signs
(IQ2, IQ3) or a shift of plus or minus 1/8 (IQ1). The 7-bit sign indices of IQ2_XXS,
IQ2_XS and IQ3_XXS stand for ggml's ``ksigns_iq2xs`` entries: the 7 bits, and an eighth
that makes the count of set bits even.
"""

from __future__ import annotations

import torch

from autotune.cache_runtime.iq_grids import grid_table

IQ1_DELTA = 0.125


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two bytes per row -> float32 (n, 1)."""
    return raw.contiguous().view(torch.float16).float()


def _shifts(stop: int, step: int, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Shift amounts 0, step, ... < stop in ``like``'s dtype and device, shaped ``shape``."""
    return torch.arange(0, stop, step, dtype=like.dtype, device=like.device).reshape(shape)


def _words(raw: torch.Tensor, width: int) -> torch.Tensor:
    """Little-endian unsigned words of ``width`` bytes (2 or 4) over the last axis, as int64
    (built from the bytes: a block's words need not be aligned in memory)."""
    shifts = torch.arange(0, 8 * width, 8, dtype=torch.int64, device=raw.device)
    return (raw.reshape(*raw.shape[:-1], -1, width).long() << shifts).sum(-1)


def _nibble_pairs(raw: torch.Tensor) -> torch.Tensor:
    """(n, m) bytes -> (n, 2m): each byte's low nibble, then its high one."""
    n = raw.shape[0]
    return ((raw.reshape(n, -1, 1) >> _shifts(8, 4, raw, (1, 1, 2))) & 0x0F).reshape(n, -1)


def _sign_bits(signs: torch.Tensor) -> torch.Tensor:
    """Bytes (...) -> (..., 8) of +1 for a clear bit and -1 for a set one, bit 0 first."""
    bits = (signs.unsqueeze(-1) >> _shifts(8, 1, signs, (8,))) & 1
    return 1.0 - 2.0 * bits.float()


def _ksigns(index: torch.Tensor) -> torch.Tensor:
    """7-bit sign indices (int64) -> ggml's sign bytes: bit 7 set where the index has an odd
    number of set bits."""
    parity = index ^ (index >> 4)
    parity = parity ^ (parity >> 2)
    parity = (parity ^ (parity >> 1)) & 1
    return index | (parity << 7)


def _iq2_scales(raw: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """IQ2_XS / IQ2_S: 16 nibble scales -> d (0.5 + s) / 4, (n, 16)."""
    return d * (0.5 + _nibble_pairs(raw).float()) * 0.25


def iq2_xxs(blocks: torch.Tensor) -> torch.Tensor:
    """66 bytes: f16 d; 8 x (4 grid indices, a uint32 of 4 x 7 sign bits and a 4-bit scale)."""
    n = blocks.shape[0]
    qs = blocks[:, 2:66].reshape(n, 8, 8)
    aux = _words(qs[:, :, 4:8], 4).reshape(n, 8)
    db = (_f16(blocks[:, 0:2]) * (0.5 + (aux >> 28).float()) * 0.25).reshape(n, 8, 1, 1)
    signs = _sign_bits(_ksigns((aux.unsqueeze(-1) >> _shifts(28, 7, aux, (1, 1, 4))) & 0x7F))
    grid = grid_table("IQ2_XXS", blocks.device)[qs[:, :, 0:4].long()]
    return (db * grid * signs).reshape(n, 256)


def iq2_xs(blocks: torch.Tensor) -> torch.Tensor:
    """74 bytes: f16 d, 32 uint16 (9-bit grid index, 7-bit sign index), 16 nibble scales."""
    n = blocks.shape[0]
    qs = _words(blocks[:, 2:66].reshape(n, 32, 2), 2).reshape(n, 32)
    db = _iq2_scales(blocks[:, 66:74], _f16(blocks[:, 0:2])).reshape(n, 16, 1, 1)
    signs = _sign_bits(_ksigns(qs >> 9)).reshape(n, 16, 2, 8)
    grid = grid_table("IQ2_XS", blocks.device)[qs & 511].reshape(n, 16, 2, 8)
    return (db * grid * signs).reshape(n, 256)


def iq2_s(blocks: torch.Tensor) -> torch.Tensor:
    """82 bytes: f16 d, 32 low bytes of grid indices, 32 sign bytes, 8 bytes of the indices'
    2 high bits, 16 nibble scales."""
    n = blocks.shape[0]
    qh = (blocks[:, 66:74].reshape(n, 8, 1).long() >> _shifts(8, 2, blocks, (1, 1, 4)).long()) & 3
    index = blocks[:, 2:34].long() | (qh.reshape(n, 32) << 8)
    db = _iq2_scales(blocks[:, 74:82], _f16(blocks[:, 0:2])).reshape(n, 16, 1, 1)
    signs = _sign_bits(blocks[:, 34:66]).reshape(n, 16, 2, 8)
    grid = grid_table("IQ2_S", blocks.device)[index].reshape(n, 16, 2, 8)
    return (db * grid * signs).reshape(n, 256)


def iq3_xxs(blocks: torch.Tensor) -> torch.Tensor:
    """98 bytes: f16 d, 64 grid indices (rows of 4), 8 uint32 of 4 x 7 sign bits and a 4-bit scale."""
    n = blocks.shape[0]
    aux = _words(blocks[:, 66:98].reshape(n, 8, 4), 4).reshape(n, 8)
    db = (_f16(blocks[:, 0:2]) * (0.5 + (aux >> 28).float()) * 0.5).reshape(n, 8, 1, 1)
    signs = _sign_bits(_ksigns((aux.unsqueeze(-1) >> _shifts(28, 7, aux, (1, 1, 4))) & 0x7F))
    grid = grid_table("IQ3_XXS", blocks.device)[blocks[:, 2:66].long()].reshape(n, 8, 4, 8)
    return (db * grid * signs).reshape(n, 256)


def iq3_s(blocks: torch.Tensor) -> torch.Tensor:
    """110 bytes: f16 d, 64 low bytes of grid indices, 8 bytes of their ninth bits, 32 sign
    bytes, 8 nibble scales; d (1 + 2 s)."""
    n = blocks.shape[0]
    qh = (blocks[:, 66:74].reshape(n, 8, 1) >> _shifts(8, 1, blocks, (1, 1, 8))) & 1
    index = blocks[:, 2:66].long() | (qh.reshape(n, 64).long() << 8)
    scales = _nibble_pairs(blocks[:, 106:110]).float()
    db = (_f16(blocks[:, 0:2]) * (1.0 + 2.0 * scales)).reshape(n, 8, 1, 1)
    signs = _sign_bits(blocks[:, 74:106]).reshape(n, 8, 4, 8)
    grid = grid_table("IQ3_S", blocks.device)[index].reshape(n, 8, 4, 8)
    return (db * grid * signs).reshape(n, 256)


def _iq1_delta(flag: torch.Tensor) -> torch.Tensor:
    """+1/8 where ``flag`` is 0, else -1/8, as float32."""
    return torch.where(flag == 0, IQ1_DELTA, -IQ1_DELTA).float()


def iq1_s(blocks: torch.Tensor) -> torch.Tensor:
    """50 bytes: f16 d, 32 low bytes of 11-bit grid indices, 8 uint16 (4 x 3 high index bits,
    a 3-bit scale, the delta's sign); d (2 s + 1) (grid +- 1/8)."""
    n = blocks.shape[0]
    qh = _words(blocks[:, 34:50].reshape(n, 8, 2), 2).reshape(n, 8)
    dl = (_f16(blocks[:, 0:2]) * (2 * ((qh >> 12) & 7) + 1).float()).reshape(n, 8, 1, 1)
    delta = _iq1_delta(qh & 0x8000).reshape(n, 8, 1, 1)
    high = (qh.unsqueeze(-1) >> _shifts(12, 3, qh, (1, 1, 4))) & 7
    index = blocks[:, 2:34].long() | (high.reshape(n, 32) << 8)
    grid = grid_table("IQ1_S", blocks.device)[index].reshape(n, 8, 4, 8)
    return (dl * (grid + delta)).reshape(n, 256)


def iq1_m(blocks: torch.Tensor) -> torch.Tensor:
    """56 bytes: 32 low bytes of 11-bit grid indices, 16 bytes of nibbles (3 high index bits,
    the delta's sign), 4 uint16 of 4 x 3-bit scales whose top nibbles together are the f16 d."""
    n = blocks.shape[0]
    words = _words(blocks[:, 48:56].reshape(n, 4, 2), 2).reshape(n, 4)
    d_bits = ((words & 0xF000) >> _shifts(16, 4, words, (1, 4)).flip(-1)).sum(-1, keepdim=True)
    d = torch.where(d_bits >= 0x8000, d_bits - 0x10000, d_bits).to(torch.int16).view(torch.float16).float()
    scales = ((words.unsqueeze(-1) >> _shifts(12, 3, words, (1, 1, 4))) & 7).reshape(n, 16)
    dl = (d * (2 * scales + 1).float()).reshape(n, 8, 2, 1, 1)
    qh = _nibble_pairs(blocks[:, 32:48]).long()
    index = blocks[:, 0:32].long() | ((qh & 7) << 8)
    delta = _iq1_delta(qh & 8).reshape(n, 8, 2, 2, 1)
    grid = grid_table("IQ1_M", blocks.device)[index].reshape(n, 8, 2, 2, 8)
    return (dl * (grid + delta)).reshape(n, 256)


GRID_DECODERS = {"IQ2_XXS": iq2_xxs, "IQ2_XS": iq2_xs, "IQ2_S": iq2_s, "IQ3_XXS": iq3_xxs, "IQ3_S": iq3_s,
                 "IQ1_S": iq1_s, "IQ1_M": iq1_m}

"""Dequantize raw GGML blocks with torch, on any device.

These follow ``gguf.quants`` operation for operation, so on the CPU they give the same
float32 bits (the tests check it); they are the CPU path's weights and the ground truth
the Triton kernels are tested against.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QType

from autotune.cache_runtime.codebooks import IQ4_NL_CODES, MXFP4_CODES
from autotune.cache_runtime.dequant_iq import GRID_DECODERS
from autotune.cache_runtime.runtime_types import RUNTIME_TYPES

QK_K = 256

# type name -> (elements per block, bytes per block)
BLOCK_SIZES: dict[str, tuple[int, int]] = {name: GGML_QUANT_SIZES[QType[name]] for name in RUNTIME_TYPES}


def row_bytes(qtype: str, cols: int) -> int:
    """Bytes of one row of ``cols`` elements."""
    elements, nbytes = block_size(qtype)
    if cols % elements:
        raise ValueError(f"{cols} columns are not whole {qtype} blocks of {elements}")
    return cols // elements * nbytes


def block_size(qtype: str) -> tuple[int, int]:
    try:
        return BLOCK_SIZES[qtype]
    except KeyError:
        raise ValueError(f"the runtime has no kernels for GGML type {qtype}") from None


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two bytes per row -> float32 (n, 1)."""
    return raw.contiguous().view(torch.float16).float()


def _steps(stop: int, step: int, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """Shift amounts 0, step, ... < stop as uint8, built on the device (no host copy, so this
    also runs inside CUDA graph capture)."""
    return torch.arange(0, stop, step, dtype=torch.uint8, device=device).reshape(shape)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte K-quant field into 8 six-bit scales and 8 mins per block."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d = (d * sc.float()).reshape(n, 8, 1)
    dm = (dmin * mn.float()).reshape(n, 8, 1)
    qs = blocks[:, 16:144].reshape(n, 4, 1, 32)
    q = ((qs >> _steps(8, 4, blocks.device, (1, 1, 2, 1))) & 0x0F).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d = (d * sc.float()).reshape(n, 8, 1)
    dm = (dmin * mn.float()).reshape(n, 8, 1)
    qh = blocks[:, 16:48].reshape(n, 1, 32)
    qs = blocks[:, 48:176].reshape(n, 4, 1, 32)
    dev = blocks.device
    low = (qs >> _steps(8, 4, dev, (1, 1, 2, 1))) & 0x0F
    high = (qh >> _steps(8, 1, dev, (1, 8, 1))) & 0x01
    q = (low.reshape(n, 8, 32) | (high << 4)).float()
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    dev = blocks.device
    ql = blocks[:, 0:128].reshape(n, 2, 1, 64)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(blocks[:, 208:210]) * scales).reshape(n, 16, 1)
    low = (ql >> _steps(8, 4, dev, (1, 1, 2, 1))) & 0x0F
    high = (qh >> _steps(8, 2, dev, (1, 1, 4, 1))) & 0x03
    q = (low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)).view(torch.int8) - 32
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks[:, 0:2])


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales = blocks[:, 0:16]
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    qs = blocks[:, 16:80].reshape(n, 2, 1, 32)
    q = ((qs >> _steps(8, 2, blocks.device, (1, 1, 4, 1))) & 0x03).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    dev = blocks.device
    low = (blocks[:, 96:104].reshape(n, 1, 8) >> _steps(8, 4, dev, (1, 2, 1))).reshape(n, 16) & 0x0F
    high = (blocks[:, 104:108].reshape(n, 1, 4) >> _steps(8, 2, dev, (1, 4, 1))).reshape(n, 16) & 0x03
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (_f16(blocks[:, 108:110]) * scales).reshape(n, 16, 1)
    ql = (blocks[:, 32:96].reshape(n, 2, 1, 32) >> _steps(8, 2, dev, (1, 1, 4, 1))).reshape(n, 16, 16) & 0x03
    qh = (blocks[:, 0:32].reshape(n, 1, 1, 32) >> _steps(8, 1, dev, (1, 1, 8, 1))).reshape(n, 16, 16) & 0x01
    q = (ql.to(torch.int8) - ((qh ^ 1) << 2).to(torch.int8)).float()  # a clear high bit subtracts 4
    return (dl * q).reshape(n, QK_K)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) bytes -> (n, 32): the low nibbles, then the high ones."""
    n = qs.shape[0]
    return ((qs.reshape(n, 1, 16) >> _steps(8, 4, qs.device, (1, 2, 1))) & 0x0F).reshape(n, 32)


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> its 32 bits (n, 32)."""
    n = qh.shape[0]
    return ((qh.reshape(n, 4, 1) >> _steps(8, 1, qh.device, (1, 1, 8))) & 0x01).reshape(n, 32)


def _lookup(q: torch.Tensor, codes: tuple[int, int]) -> torch.Tensor:
    """Code book entries (``codebooks``) of the nibbles q, as float32."""
    q = q.long()
    word = torch.where(q < 8, codes[0], codes[1])
    byte = (word >> (8 * (q & 7))) & 0xFF
    return ((byte ^ 0x80) - 0x80).float()


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks[:, 0:2]) * (_nibbles(blocks[:, 2:18]).to(torch.int8) - 8).float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks[:, 0:2]) * _nibbles(blocks[:, 4:20]).float() + _f16(blocks[:, 2:4])


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 6:22]) | (_bits(blocks[:, 2:6]) << 4)
    return _f16(blocks[:, 0:2]) * (q.to(torch.int8) - 16).float()


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 8:24]) | (_bits(blocks[:, 4:8]) << 4)
    return _f16(blocks[:, 0:2]) * q.float() + _f16(blocks[:, 2:4])


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks[:, 0:2]) * _lookup(_nibbles(blocks[:, 2:18]), IQ4_NL_CODES)


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    dev = blocks.device
    high = (blocks[:, 2:4].reshape(n, 2, 1) >> _steps(8, 2, dev, (1, 1, 4))).reshape(n, 8) & 0x03
    low = (blocks[:, 4:8].reshape(n, 4, 1) >> _steps(8, 4, dev, (1, 1, 2))).reshape(n, 8) & 0x0F
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (_f16(blocks[:, 0:2]) * scales).reshape(n, 8, 1)
    q = _nibbles(blocks[:, 8:136].reshape(n * 8, 16)).reshape(n, 8, 32)
    return (dl * _lookup(q, IQ4_NL_CODES)).reshape(n, QK_K)


def _mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    e = blocks[:, 0:1].int()
    # ggml_e8m0_to_fp32_half: 2^(e - 128), subnormal for e < 2
    bits = torch.where(e < 2, 0x00200000 * (e + 1), (e - 1) << 23)
    return bits.view(torch.float32) * _lookup(_nibbles(blocks[:, 1:17]), MXFP4_CODES)


_BLOCK_DECODERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "Q8_0": _q8_0, "Q2_K": _q2_k, "Q3_K": _q3_k,
                   "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "IQ4_NL": _iq4_nl,
                   "IQ4_XS": _iq4_xs, "MXFP4": _mxfp4, **GRID_DECODERS}
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def dequantize(raw: torch.Tensor, qtype: str) -> torch.Tensor:
    """Raw rows ``(..., row_bytes)`` of uint8 -> float32 ``(..., cols)``."""
    if raw.dtype != torch.uint8:
        raise TypeError(f"expected raw uint8 bytes, got {raw.dtype}")
    elements, nbytes = block_size(qtype)
    lead = raw.shape[:-1]
    cols = raw.shape[-1] // nbytes * elements
    if qtype in _FLOAT_TYPES:
        return raw.contiguous().view(_FLOAT_TYPES[qtype]).float().reshape(*lead, cols)
    blocks = raw.reshape(-1, nbytes)
    return _BLOCK_DECODERS[qtype](blocks).reshape(*lead, cols)

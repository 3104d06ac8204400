"""Dequantize raw GGML blocks with torch, on any device.

These follow ``gguf.quants`` operation for operation, so on the CPU they give the same
float32 bits (the tests check it); they are the CPU path's weights and the ground truth
the Triton kernels are tested against.
"""

from __future__ import annotations

import torch

QK_K = 256

# type name -> (elements per block, bytes per block)
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}


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


_BLOCK_DECODERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "Q8_0": _q8_0}
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

"""Random raw GGML rows for kernel checks: random bytes with sane scale fields.

Random bytes are valid blocks of every quantized type the runtime reads once their scale
fields (f16, MXFP4's e8m0 exponent byte, or IQ1_M's f16 spread over 4 nibbles) hold sane
values."""

from __future__ import annotations

import numpy as np

from autotune.cache_runtime.dequant import block_size

# Byte offsets of the f16 scale fields inside one block.
_F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2),
               "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "IQ4_NL": (0,), "IQ4_XS": (0,),
               "MXFP4": (), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
               "IQ1_S": (0,), "IQ1_M": ()}
E8M0_BIAS = 128  # an e8m0 byte e scales MXFP4 values by 2^(e - 128) (gguf's doubled e2m1 codes)


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.01) -> np.ndarray:
    """``rows`` rows of ``cols`` elements of ``qtype`` as raw bytes, shape (rows, row_bytes)."""
    elements, nbytes = block_size(qtype)
    n_blocks = rows * cols // elements
    if qtype in ("F32", "F16"):
        values = rng.standard_normal(rows * cols).astype(np.float32 if qtype == "F32" else np.float16)
        return values.view(np.uint8).reshape(rows, -1)
    if qtype == "BF16":
        bits = rng.standard_normal(rows * cols).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8).reshape(rows, -1)
    blocks = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    if qtype == "MXFP4":
        exponent = E8M0_BIAS + np.round(np.log2(scale)) + rng.integers(-1, 2, n_blocks)
        blocks[:, 0] = exponent.astype(np.uint8)
    if qtype == "IQ1_M":  # the f16 d is the top nibbles of the 4 uint16 scale words at 48
        d = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16).view(np.uint16).astype(np.uint16)
        words = blocks[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
        nibbles = (d[:, None] >> np.array([0, 4, 8, 12], dtype=np.uint16)) & np.uint16(0xF)
        blocks[:, 48:56] = (words | (nibbles << np.uint16(12))).view(np.uint8)
    for offset in _F16_FIELDS[qtype]:
        d = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
        blocks[:, offset : offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)

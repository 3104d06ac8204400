"""Random raw GGML rows for kernel checks: random bytes with sane f16 scale fields.

Random bytes are valid K-quant and Q8_0 blocks once their f16 scale fields hold sane values."""

from __future__ import annotations

import numpy as np

from autotune.cache_runtime.dequant import block_size

# Byte offsets of the f16 scale fields inside one block.
_F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q8_0": (0,)}


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
    for offset in _F16_FIELDS[qtype]:
        d = (scale * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
        blocks[:, offset : offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)

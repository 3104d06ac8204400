"""The runtime's torch dequantizers give exactly gguf.quants' float32 values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf import quants as gguf_quants

from autotune.cache_runtime.dequant import BLOCK_SIZES, dequantize
from autotune.cache_runtime.random_blocks import random_blocks


@pytest.mark.parametrize("qtype", sorted(BLOCK_SIZES))
def test_matches_gguf_bit_for_bit(qtype: str) -> None:
    rng = np.random.default_rng(7)
    raw = random_blocks(qtype, rows=6, cols=512, rng=rng)
    expected = gguf_quants.dequantize(raw, QType[qtype]).astype(np.float32)
    got = dequantize(torch.from_numpy(raw), qtype).numpy()
    assert got.shape == (6, 512)
    np.testing.assert_array_equal(got, expected)


def test_leading_dimensions_are_kept() -> None:
    raw = random_blocks("Q4_K", rows=12, cols=256, rng=np.random.default_rng(1))
    flat = dequantize(torch.from_numpy(raw), "Q4_K")
    stacked = dequantize(torch.from_numpy(raw).reshape(3, 4, -1), "Q4_K")
    assert torch.equal(stacked.reshape(12, 256), flat)


def test_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="no kernels"):
        dequantize(torch.zeros(2, 18, dtype=torch.uint8), "Q4_0")

"""The runtime's torch dequantizers give exactly gguf.quants' float32 values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf import quants as gguf_quants

from autotune.cache_runtime.dequant import BLOCK_SIZES, dequantize
from autotune.cache_runtime.iq_grids import grid_table
from autotune.cache_runtime.random_blocks import random_blocks
from autotune.quants import quantize


@pytest.mark.parametrize("qtype", sorted(BLOCK_SIZES))
def test_matches_gguf_bit_for_bit(qtype: str) -> None:
    rng = np.random.default_rng(7)
    raw = random_blocks(qtype, rows=6, cols=512, rng=rng)
    expected = gguf_quants.dequantize(raw, QType[qtype]).astype(np.float32)
    got = dequantize(torch.from_numpy(raw), qtype).numpy()
    assert got.shape == (6, 512)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("qtype", ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"])
def test_grid_types_encoded_blocks_match_gguf(qtype: str) -> None:
    """The synthetic encoders' blocks (``quants_iq``), not only random bytes."""
    values = np.random.default_rng(2).standard_normal((6, 512)).astype(np.float32)
    raw = quantize(values, QType[qtype]).reshape(6, -1)
    expected = gguf_quants.dequantize(raw, QType[qtype]).astype(np.float32)
    np.testing.assert_array_equal(dequantize(torch.from_numpy(raw), qtype).numpy(), expected)


def test_leading_dimensions_are_kept() -> None:
    raw = random_blocks("Q4_K", rows=12, cols=256, rng=np.random.default_rng(1))
    flat = dequantize(torch.from_numpy(raw), "Q4_K")
    stacked = dequantize(torch.from_numpy(raw).reshape(3, 4, -1), "Q4_K")
    assert torch.equal(stacked.reshape(12, 256), flat)


def test_mxfp4_every_exponent_matches_gguf() -> None:
    """All 256 e8m0 scale bytes, the subnormal ones (0 and 1) and the largest included."""
    raw = random_blocks("MXFP4", rows=256, cols=32, rng=np.random.default_rng(3))
    raw[:, 0] = np.arange(256, dtype=np.uint8)
    with np.errstate(over="ignore"):  # the largest exponents overflow to inf, in both
        expected = gguf_quants.dequantize(raw, QType.MXFP4).astype(np.float32)
    np.testing.assert_array_equal(dequantize(torch.from_numpy(raw), "MXFP4").numpy(), expected)


def test_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="no kernels"):
        dequantize(torch.zeros(2, 54, dtype=torch.uint8), "TQ1_0")


def test_grid_table_is_made_once_per_device() -> None:
    assert grid_table("IQ2_XXS", "cpu") is grid_table("IQ2_XXS", torch.device("cpu"))
    assert grid_table("IQ1_M", "cpu") is grid_table("IQ1_S", "cpu")  # IQ1_M reads IQ1_S's grid
    assert grid_table("IQ3_S", "cpu").shape == (512, 4)

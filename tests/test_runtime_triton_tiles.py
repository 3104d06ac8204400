"""Each type's Triton tile dequantizes to gguf.quants' values, element for element.

A test kernel stores ``superblock_matrix`` (the prefill kernels' weights) in float32. Under
Triton's interpreter (TRITON_INTERPRET=1, set here before any kernel module is imported)
the tiles compute in numpy with the operation order of ``gguf.quants``, so the values must
be equal; compiled on a GPU, the compiler may fuse a multiply-add (one rounding instead of
two), so there they must agree to float32 rounding of the largest value.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf import quants as gguf_quants

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from autotune.cache_runtime.dequant import BLOCK_SIZES  # noqa: E402
from autotune.cache_runtime.random_blocks import random_blocks  # noqa: E402
from autotune.cache_runtime.triton_tiles import (QTYPE_CODES, SUPERBLOCK_BYTES, grid_arg,  # noqa: E402
                                                  superblock_matrix)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS = 4


@triton.jit
def _matrix_kernel(w_ptr, iq_grid, out_ptr, row_bytes, K: tl.constexpr, QT: tl.constexpr, SB_BYTES: tl.constexpr,
                   R: tl.constexpr):
    """out (R, K) float32 = the weight; program i decodes super-block i of every row."""
    rows = tl.arange(0, R)
    sb = tl.program_id(0)
    w = superblock_matrix((w_ptr + rows * row_bytes + sb * SB_BYTES)[None, :], iq_grid, QT)
    k = tl.arange(0, 256)
    tl.store(out_ptr + rows[None, :] * K + sb * 256 + k[:, None], w)


@pytest.mark.parametrize("qtype", sorted(BLOCK_SIZES))
def test_tile_matches_gguf(qtype: str) -> None:
    raw = random_blocks(qtype, ROWS, 512, np.random.default_rng(11))
    expected = gguf_quants.dequantize(raw, QType[qtype]).astype(np.float32)
    out = torch.empty(ROWS, 512, dtype=torch.float32, device=DEVICE)
    w = torch.from_numpy(raw).to(DEVICE)
    _matrix_kernel[(2,)](w, grid_arg(qtype, w.device), out, raw.shape[1], K=512, QT=QTYPE_CODES[qtype],
                         SB_BYTES=SUPERBLOCK_BYTES[qtype], R=ROWS)
    got = out.cpu().numpy()
    if DEVICE == "cpu":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-7 * np.abs(expected).max())

"""The experts' decode kernels (gate+up, down) on 8-bit inputs, as llama.cpp's MMVQ kernels
do: the input is rounded to int8 in blocks of 32 (a float scale and the scaled code sum a
block, llama.cpp's Q8_1), and each 32-bit word of weight codes meets a word of input codes in
one ``dp4a`` (4 multiply-adds).

Why: the float path turns every weight into a float and multiplies it, 9-19 machine
instructions an element. Counted for sm_90 (``autotune.studies.sass_counts --gate-up``,
``--down``), Q4_K's gate+up takes 10.8 -> 4.2 instructions an element this way, Q6_K's down
15.2 -> 10.2, MXFP4's (gpt-oss) 15.4 -> 7.4. Measured on the H100 (2026-12-08), the first
version ran slower than the float path on every file but gpt-oss: its tiles summed a
chunk's blocks across warps, through shared memory, at every chunk (10-16 barriers). The
tiles now lead with the summed axes (``triton_int8_kquants.q4_k_dots``). It is the cache
knob ``int8_inputs`` (off by default; the tuner searches it on the GPU).

The input's rounding is llama.cpp's (``quantize_q8_1``: d = max |x| / 127, codes rounded half
away from zero), so the results move by about what llama.cpp's own 8-bit inputs move them.

Types (``INT8_TYPES``): Q4_K and Q6_K (a Q4_K_M file's experts), Q8_0, and the 4- and 5-bit
types of 32-element blocks (gpt-oss's MXFP4, IQ4_XS and IQ4_NL among them). The others keep
the float path (``triton_tiles``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_int8_blocks32 import nibble_block_dots, q8_0_dots
from autotune.cache_runtime.triton_int8_kquants import q4_k_dots, q6_k_dots

# weight types with an 8-bit-input dot product (triton_int8_kquants, triton_int8_blocks32)
INT8_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "MXFP4")


@triton.jit
def quantize_store(x, xq_ptr, xd_ptr, xs_ptr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """Store ``x`` (BLOCK_K,) float32, zero from element K on (K a multiple of 32) as 8-bit
    blocks of 32: int8 codes packed 4 to an int32 word at ``xq_ptr`` (K / 4), each block's
    scale d at ``xd_ptr`` and d times its code sum at ``xs_ptr`` (K / 32)."""
    xb = tl.reshape(x, (BLOCK_K // 32, 32))
    d = tl.max(tl.abs(xb), 1) / 127.0
    v = xb / tl.where(d > 0, d, 1.0)[:, None]
    q = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v)).to(tl.int32)  # roundf: half away from zero
    blocks = tl.arange(0, BLOCK_K // 32)
    tl.store(xd_ptr + blocks, d, mask=blocks < K // 32)
    tl.store(xs_ptr + blocks, d * tl.sum(q, 1).to(tl.float32), mask=blocks < K // 32)
    shift = (8 * tl.arange(0, 4))[None, :]
    words = tl.sum((tl.reshape(q, (BLOCK_K // 4, 4)) & 255) << shift, 1)  # disjoint bytes: the sum is an or
    w = tl.arange(0, BLOCK_K // 4)
    tl.store(xq_ptr + w, words, mask=w < K // 4)


@triton.jit
def chunk_dots(base, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr, s0, K: tl.constexpr, QT: tl.constexpr,
               SB_BYTES: tl.constexpr, S: tl.constexpr):
    """``triton_gemv._chunk_dot`` on the 8-bit input: (S, R) dot products of R weight rows
    (``base`` (R,) pointers) of K elements, super-blocks s0 .. s0 + S; each row's input at
    ``row_words`` and ``row_blocks`` (R,) (``triton_int8_kquants.q4_k_dots``). Where K is not
    whole super-blocks (32-element block types), the last chunk starts 8 blocks before the
    row's end, and the blocks it shares with the chunk before are dropped."""
    n_sb: tl.constexpr = (K + 255) // 256
    s = s0 + tl.arange(0, S)
    s_ok = s < n_sb
    s = tl.minimum(s, n_sb - 1)
    if K % 256 != 0:
        first = tl.minimum(8 * s, K // 32 - 8)  # the chunk's first block
        blk = base[None, :] + (first * (SB_BYTES // 8))[:, None]
    else:
        first = 8 * s
        blk = base[None, :] + (s * SB_BYTES)[:, None]
    lo = 8 * s - first  # blocks of the chunk before
    if QT == 12:
        dots = q4_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr)
    elif QT == 14:
        dots = q6_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr)
    elif QT == 8:
        dots = q8_0_dots(blk, first, lo, row_words, row_blocks, xq_ptr, xd_ptr)
    else:
        dots = nibble_block_dots(blk, first, lo, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr, QT)
    return tl.where(s_ok[:, None], dots, 0.0)


@triton.jit
def quantize_rows_kernel(x_ptr, xq_ptr, xd_ptr, xs_ptr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row ``program_id`` of x (rows of K float32) in 8-bit blocks (``quantize_store``), into
    rows of K / 4 words and K / 32 scales and sums."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row * K + offs, mask=offs < K, other=0.0)
    quantize_store(x, xq_ptr + row * (K // 4), xd_ptr + row * (K // 32), xs_ptr + row * (K // 32), K, BLOCK_K)

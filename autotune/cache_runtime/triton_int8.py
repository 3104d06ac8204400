"""The experts' decode kernels (gate+up, down) on 8-bit inputs, as llama.cpp's MMVQ kernels
do: the input is rounded to int8 in blocks of 32 (a float scale and the scaled code sum a
block, llama.cpp's Q8_1), and each 32-bit word of weight codes meets a word of input codes in
one ``dp4a`` (4 multiply-adds).

Why: the float path turns every weight into a float and multiplies it, 9-19 machine
instructions an element, and the expert kernels run near the GPU's instruction issue limit
(``studies/quant_types``, "What bounds the expert kernels"). Counted for sm_90
(``autotune.studies.sass_counts --gate-up``, ``--down``), Q4_K's gate+up takes under half the
instructions this way (10.8 -> 4.9 an element), Q6_K's down about three quarters.

The input's rounding is llama.cpp's (``quantize_q8_1``: d = max |x| / 127, codes rounded half
away from zero), so the results move by about what llama.cpp's own 8-bit inputs move them.

Types: Q4_K and Q6_K (a Q4_K_M file's experts). The others keep the float path (``triton_tiles``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_tile_kquants import k_scale_min
from autotune.cache_runtime.triton_tile_parts import INTERPRETED, load_f16, load_u16

INT8_TYPES = ("Q4_K", "Q6_K")  # weight types with an 8-bit-input dot product here


@triton.jit
def dp4a(a, b, c, SIGNED: tl.constexpr = False):
    """c + the dot product of the 4 bytes of ``a`` (unsigned; signed with SIGNED) with those of
    ``b`` (signed), all int32: PTX's ``dp4a`` on the GPU, byte by byte in the interpreter."""
    if INTERPRETED:
        out = c
        for i in tl.static_range(4):
            byte = (a >> (8 * i)) & 255
            if SIGNED:
                byte = (byte ^ 128) - 128
            out += byte * ((((b >> (8 * i)) & 255) ^ 128) - 128)
        return out
    if SIGNED:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    return tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                     dtype=tl.int32, is_pure=True, pack=1)


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
def q4_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr):
    """(S, R) dot products of Q4_K super-blocks ``blk`` (S, R byte pointers; super-block
    ``s`` (S,) of each row) with the 8-bit input. Codes: the 32 bytes of part j hold elements
    64j + 4w + i (low nibbles) and 64j + 32 + 4w + i (high nibbles), so a 32-bit word w of them,
    masked, lines up with word w of input blocks 8s + 2j and 8s + 2j + 1. ``row_words`` and
    ``row_blocks`` (R,): where each row's input starts, in words and in blocks (zeros where the
    rows share one): every row addresses its own input, which keeps the input's layout the
    weights' (as ``triton_gemv._chunk_dot`` explains)."""
    b = blk[:, :, None, None]
    j = tl.arange(0, 4)[None, None, :, None]
    w = tl.arange(0, 8)[None, None, None, :]
    codes = tl.load((b + 16 + 32 * j + 4 * w).to(tl.pointer_type(tl.int32)))  # (S, R, 4, 8)
    word = s[:, None, None, None] * 64 + 16 * j + w + row_words[None, :, None, None]
    zero = tl.zeros_like(codes)
    low = tl.sum(dp4a(codes & 0x0F0F0F0F, tl.load(xq_ptr + word), zero), 3).to(tl.float32)  # (S, R, 4)
    high = tl.sum(dp4a((codes >> 4) & 0x0F0F0F0F, tl.load(xq_ptr + word + 8), zero), 3).to(tl.float32)
    b3 = blk[:, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    sc_low, mn_low = k_scale_min(b3, 2 * j3)
    sc_high, mn_high = k_scale_min(b3, 2 * j3 + 1)
    block = s[:, None, None] * 8 + 2 * j3 + row_blocks[None, :, None]  # the input block of sub-block 2j
    scaled = sc_low * tl.load(xd_ptr + block) * low + sc_high * tl.load(xd_ptr + block + 1) * high
    mins = mn_low * tl.load(xs_ptr + block) + mn_high * tl.load(xs_ptr + block + 1)
    return tl.sum(load_f16(b3) * scaled - load_f16(b3 + 2) * mins, 2)


@triton.jit
def _u32_from_u16s(p):
    """The little-endian 32-bit words at byte pointers ``p`` (2-byte aligned), as int32: two
    16-bit loads (Q6_K's 210-byte super-blocks leave words at odd half-words)."""
    return load_u16(p) | (load_u16(p + 2) << 16)


@triton.jit
def q6_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr):
    """(S, R) dot products of Q6_K super-blocks (as ``q4_k_dots``) with the 8-bit input.
    Element 128h + 64n + 32u + 4w + i is nibble n of ql[64h + 32u + 4w + i] with bits 4n + 2u of
    qh[32h + 4w + i] above it, less 32; a 32-bit word of those 4 elements lines up with word w
    of input block 4h + 2n + u, and the 16 elements of words 4g .. 4g + 3 share scale
    8h + 4n + 2u + g. The bytes less 32 stay within their bytes: the top bit of each is set
    first, so no borrow crosses into the next."""
    b = blk[:, :, None, None, None, None, None]
    h = tl.arange(0, 2)[None, None, :, None, None, None, None]
    n = tl.arange(0, 2)[None, None, None, :, None, None, None]
    u = tl.arange(0, 2)[None, None, None, None, :, None, None]
    g = tl.arange(0, 2)[None, None, None, None, None, :, None]
    w = 4 * g + tl.arange(0, 4)[None, None, None, None, None, None, :]  # (S, R, 2 h, 2 n, 2 u, 2 g, 4)
    low = (_u32_from_u16s(b + 64 * h + 32 * u + 4 * w) >> (4 * n)) & 0x0F0F0F0F
    high = ((_u32_from_u16s(b + 128 + 32 * h + 4 * w) >> (4 * n + 2 * u)) & 0x03030303) << 4
    codes = (((low | high) | -0x7F7F7F80) - 0x20202020) ^ -0x7F7F7F80  # each byte less 32 (0x80808080 as int32)
    block = 4 * h + 2 * n + u
    word = s[:, None, None, None, None, None, None] * 64 + 8 * block + w + row_words[None, :, None, None, None, None, None]
    sums = tl.sum(dp4a(codes, tl.load(xq_ptr + word), tl.zeros_like(codes), SIGNED=True), 6).to(tl.float32)
    b6 = blk[:, :, None, None, None, None]
    h6, n6, u6, g6 = tl.arange(0, 2)[None, None, :, None, None, None], tl.arange(0, 2)[None, None, None, :, None, None], \
        tl.arange(0, 2)[None, None, None, None, :, None], tl.arange(0, 2)[None, None, None, None, None, :]
    sc = tl.load((b6 + 192 + 8 * h6 + 4 * n6 + 2 * u6 + g6).to(tl.pointer_type(tl.int8))).to(tl.float32)
    dx = tl.load(xd_ptr + s[:, None, None, None, None, None] * 8 + 4 * h6 + 2 * n6 + u6
                 + row_blocks[None, :, None, None, None, None])
    part = tl.sum(tl.sum(tl.sum(tl.sum(sc * dx * sums, 5), 4), 3), 2)
    return load_f16(blk + 208) * part


@triton.jit
def chunk_dots(base, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr, s0, K: tl.constexpr, QT: tl.constexpr,
               SB_BYTES: tl.constexpr, S: tl.constexpr):
    """``triton_gemv._chunk_dot`` on the 8-bit input: (S, R) dot products of R weight rows
    (``base`` (R,) pointers) of K elements (whole super-blocks), super-blocks s0 .. s0 + S; each
    row's input at ``row_words`` and ``row_blocks`` (R,) (``q4_k_dots``)."""
    n_sb: tl.constexpr = K // 256
    s = s0 + tl.arange(0, S)
    s_ok = s < n_sb
    s = tl.minimum(s, n_sb - 1)
    blk = base[None, :] + (s * SB_BYTES)[:, None]
    if QT == 12:
        dots = q4_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr)
    else:
        tl.static_assert(QT == 14, "no 8-bit-input dot product for this GGML type")
        dots = q6_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr)
    return tl.where(s_ok[:, None], dots, 0.0)


@triton.jit
def quantize_rows_kernel(x_ptr, xq_ptr, xd_ptr, xs_ptr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row ``program_id`` of x (rows of K float32) in 8-bit blocks (``quantize_store``), into
    rows of K / 4 words and K / 32 scales and sums."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row * K + offs, mask=offs < K, other=0.0)
    quantize_store(x, xq_ptr + row * (K // 4), xd_ptr + row * (K // 32), xs_ptr + row * (K // 32), K, BLOCK_K)

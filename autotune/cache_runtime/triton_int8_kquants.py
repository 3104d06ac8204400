"""The 8-bit-input dot products of the K-quants with that path (``triton_int8``): Q4_K and
Q6_K, the experts of a Q4_K_M file."""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_tile_kquants import k_scale_min
from autotune.cache_runtime.triton_tile_parts import dp4a, load_f16, load_u32_halves


@triton.jit
def q4_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr, xs_ptr):
    """(S, R) dot products of Q4_K super-blocks ``blk`` (S, R byte pointers; super-block
    ``s`` (S,) of each row) with the 8-bit input. Codes: the 32 bytes of part j hold elements
    64j + 4w + i (low nibbles) and 64j + 32 + 4w + i (high nibbles), so a 32-bit word w of them,
    masked, lines up with word w of input blocks 8s + 2j and 8s + 2j + 1. ``row_words`` and
    ``row_blocks`` (R,): where each row's input starts, in words and in blocks (zeros where the
    rows share one): every row addresses its own input, which keeps the input's layout the
    weights'. The axes summed here come first, (4 j, S, R, 8 w): Triton hands a warp's lanes out
    along the leading axes, so these sums stay within a warp and the warps take rows
    (``triton_tiles`` explains the layout)."""
    b = blk.to(tl.pointer_type(tl.int32))[None, :, :, None]  # cast first: the words' run stays contiguous to Triton
    j = tl.arange(0, 4)[:, None, None, None]
    w = tl.arange(0, 8)[None, None, None, :]
    codes = tl.load(b + 4 + 8 * j + w)  # (4, S, R, 8)
    word = s[None, :, None, None] * 64 + 16 * j + w + row_words[None, None, :, None]
    zero = tl.zeros_like(codes)
    low = tl.sum(dp4a(codes & 0x0F0F0F0F, tl.load(xq_ptr + word), zero), 3).to(tl.float32)  # (4, S, R)
    high = tl.sum(dp4a((codes >> 4) & 0x0F0F0F0F, tl.load(xq_ptr + word + 8), zero), 3).to(tl.float32)
    b3 = blk[None, :, :]
    j3 = tl.arange(0, 4)[:, None, None]
    sc_low, mn_low = k_scale_min(b3, 2 * j3)
    sc_high, mn_high = k_scale_min(b3, 2 * j3 + 1)
    block = s[None, :, None] * 8 + 2 * j3 + row_blocks[None, None, :]  # the input block of sub-block 2j
    scaled = sc_low * tl.load(xd_ptr + block) * low + sc_high * tl.load(xd_ptr + block + 1) * high
    mins = mn_low * tl.load(xs_ptr + block) + mn_high * tl.load(xs_ptr + block + 1)
    return tl.sum(load_f16(b3) * scaled - load_f16(b3 + 2) * mins, 0)


@triton.jit
def q6_k_dots(blk, s, row_words, row_blocks, xq_ptr, xd_ptr):
    """(S, R) dot products of Q6_K super-blocks (as ``q4_k_dots``) with the 8-bit input.
    Element 128h + 64n + 32u + 4w + i is nibble n of ql[64h + 32u + 4w + i] with bits 4n + 2u of
    qh[32h + 4w + i] above it, less 32; a 32-bit word of those 4 elements lines up with word w
    of input block q = 4h + 2n + u, and the 16 elements of words 4g .. 4g + 3 share scale
    2q + g. The tile is (16 (q, g), S, R, 4). The bytes less 32 stay within their bytes: the
    top bit of each is set first, so no borrow crosses into the next."""
    b = blk[None, :, :, None]
    qg = tl.arange(0, 16)[:, None, None, None]
    q = qg // 2
    h, n, u = q // 4, (q // 2) % 2, q % 2
    w = 4 * (qg % 2) + tl.arange(0, 4)[None, None, None, :]  # (16, S, R, 4)
    low = (load_u32_halves(b + 64 * h + 32 * u + 4 * w) >> (4 * n)) & 0x0F0F0F0F
    high = ((load_u32_halves(b + 128 + 32 * h + 4 * w) >> (4 * n + 2 * u)) & 0x03030303) << 4
    codes = (((low | high) | -0x7F7F7F80) - 0x20202020) ^ -0x7F7F7F80  # each byte less 32 (0x80808080 as int32)
    word = s[None, :, None, None] * 64 + 8 * q + w + row_words[None, None, :, None]
    sums = tl.sum(dp4a(codes, tl.load(xq_ptr + word), tl.zeros_like(codes), SIGNED=True), 3).to(tl.float32)
    qg3 = tl.arange(0, 16)[:, None, None]
    b3 = blk[None, :, :]
    sc = tl.load((b3 + 192 + qg3).to(tl.pointer_type(tl.int8))).to(tl.float32)
    dx = tl.load(xd_ptr + s[None, :, None] * 8 + qg3 // 2 + row_blocks[None, None, :])
    return load_f16(blk + 208) * tl.sum(sc * dx * sums, 0)

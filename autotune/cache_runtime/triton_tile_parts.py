"""Small Triton helpers the per-type dequantizing tiles share (``triton_tiles`` explains the tiles)."""

from __future__ import annotations

import triton
import triton.language as tl

# Triton's interpreter (the CPU tests) runs no inline PTX: code_lookup, code_lookup_bytes and dp4a
# take integer paths there.
INTERPRETED: tl.constexpr = tl.constexpr(bool(triton.knobs.runtime.interpret))


@triton.jit
def load_f16(p):
    """The float16 at byte pointer p, as float32."""
    return tl.load(p.to(tl.pointer_type(tl.float16))).to(tl.float32)


@triton.jit
def tile_axes(blk, A: tl.constexpr, T: tl.constexpr):
    """Block pointers and the a (A groups) and t (T elements) axes of a tile with 2 middle
    axes: (A, S, R, ., ., T). Also the block pointers broadcast over a, for the small loads."""
    b = blk[None, :, :, None, None, None]
    a = tl.arange(0, A)[:, None, None, None, None, None]
    t = tl.arange(0, T)[None, None, None, None, None, :]
    return b, b + 0 * a, a, t


@triton.jit
def middle_axes(N0: tl.constexpr, N1: tl.constexpr):
    """The two middle axes of a 6-axis tile: (N0,) on axis 3 and (N1,) on axis 4."""
    return (tl.arange(0, N0)[None, None, None, :, None, None],
            tl.arange(0, N1)[None, None, None, None, :, None])


@triton.jit
def blocks32_axes(blk):
    """The (8 a, S, R, 8 j, 2 n, 2 t) tile of eight 32-element runs (the 32-element block
    types' and the grid types'): block pointers (also broadcast over a), the a, t, j and n
    axes, and the element index 32j + 16n + 2a + t."""
    b, ba, a, t = tile_axes(blk, 8, 2)
    j, n = middle_axes(8, 2)
    return b, ba, a, t, j, n, 32 * j + 16 * n + 2 * a + t


@triton.jit
def small_int_to_float(v):
    """int32 v (|v| < 2^22) as float32, exactly: v added to the bits of 1.5 * 2^23, less that
    (an integer and a float add, where the compiler's conversion of a small value costs more
    instructions in Q3_K's and Q6_K's tiles: ``autotune.studies.sass_counts``)."""
    return (v + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


def prmt_lookup4(codes: tuple[int, int]) -> tl.constexpr:
    """PTX that looks up 4 nibbles (the bytes of $1, each 0..15) in the 16 int8 entries
    ``codes`` (``codebooks``' two int64 halves) into the bytes of $0, as llama.cpp's
    ``get_int_from_table_16``: the nibbles' low 3 bits become one byte-permute selector,
    two permutes (``prmt``) pick from entries 0-7 and 8-15, and bit 3 chooses per byte.
    About 2.5 instructions a value, where the shifts of 64-bit halves take about 8
    (``autotune.studies.sass_counts``: IQ4_NL 14.6 -> 12.4 an element)."""
    words = [(half >> shift) & 0xFFFFFFFF for half in codes for shift in (0, 32)]
    return tl.constexpr(
        "{ .reg .b32 s, t, sel, lo, hi, m, w0, w1, w2, w3; "
        + " ".join(f"mov.b32 w{i}, {word:#010x};" for i, word in enumerate(words))
        + " and.b32 s, $1, 0x07070707; shr.u32 t, s, 4; or.b32 t, t, s; prmt.b32 sel, t, 0, 0x4420;"
        " prmt.b32 lo, w0, w1, sel; prmt.b32 hi, w2, w3, sel;"
        " and.b32 m, $1, 0x08080808; shr.u32 m, m, 3; mul.lo.u32 m, m, 255;"
        " lop3.b32 $0, lo, hi, m, 0xD8; }")


@triton.jit
def _code_byte(q, LOW: tl.constexpr, HIGH: tl.constexpr):
    """The interpreter's lookup of nibbles q (int32): byte (q & 7) of LOW (q < 8) or HIGH, the
    int64 packing of ``codebooks``, as an int32 0..255 (the entry's two's-complement byte)."""
    word = tl.where(q < 8, LOW, HIGH).to(tl.int64)
    return ((word >> (8 * (q & 7)).to(tl.int64)) & 255).to(tl.int32)


@triton.jit
def code_lookup(q, LOW: tl.constexpr, HIGH: tl.constexpr, PRMT: tl.constexpr):
    """The code book entries of nibbles q (int32) as float32: on the GPU by ``PRMT``
    (``prmt_lookup4`` of the code book), four at a time; in the interpreter by ``_code_byte``."""
    if INTERPRETED:
        return ((_code_byte(q, LOW, HIGH) ^ 128) - 128).to(tl.float32)
    v = tl.inline_asm_elementwise(PRMT, "=r,r", [q.to(tl.int8)], dtype=tl.int8, is_pure=True, pack=4)
    return v.to(tl.float32)


@triton.jit
def code_lookup_bytes(q, LOW: tl.constexpr, HIGH: tl.constexpr, PRMT: tl.constexpr):
    """``code_lookup`` of the 4 nibbles held in the bytes of int32 words ``q`` (each byte
    0..15): the 4 entries as the bytes of int32 words, for ``dp4a``."""
    if INTERPRETED:
        out = tl.zeros_like(q)
        for i in tl.static_range(4):
            out |= _code_byte((q >> (8 * i)) & 15, LOW, HIGH) << (8 * i)
        return out
    return tl.inline_asm_elementwise(PRMT, "=r,r", [q], dtype=tl.int32, is_pure=True, pack=1)


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
def e8m0_half(e):
    """MXFP4's e8m0 exponent bytes e (int32) as 2^(e - 128), float32 (ggml_e8m0_to_fp32_half:
    subnormal for e < 2)."""
    return tl.where(e < 2, 0x00200000 * (e + 1), (e - 1) << 23).to(tl.float32, bitcast=True)


@triton.jit
def load_u16(p):
    """The little-endian uint16 at byte pointer p (2-byte aligned), as int32."""
    return tl.load(p.to(tl.pointer_type(tl.uint16))).to(tl.int32)


@triton.jit
def load_u32_halves(p):
    """The little-endian 32-bit words at byte pointers ``p`` (2-byte aligned: blocks of 18, 22
    or 210 bytes leave words at odd half-words), as int32: two 16-bit loads."""
    return load_u16(p) | (load_u16(p + 2) << 16)


@triton.jit
def load_u32_bytes(p):
    """The little-endian 32-bit words at byte pointers ``p`` of any alignment (MXFP4's 17-byte
    blocks), as int32: four byte loads. (Q8_0's 2-byte aligned words take these too: counted
    for sm_90, their two 16-bit loads cost layout conversions, ``autotune.studies.sass_counts``.)"""
    return (tl.load(p).to(tl.int32) | (tl.load(p + 1).to(tl.int32) << 8) | (tl.load(p + 2).to(tl.int32) << 16)
            | (tl.load(p + 3).to(tl.int32) << 24))

"""The GPU's code-book lookup (``triton_tile_parts.prmt_lookup4``'s PTX), run instruction by
instruction by a small emulator of the PTX it uses (``prmt``, ``lop3`` and plain integer
ops, as the PTX ISA defines them), against gguf's code books on every 4 nibbles. The
interpreter tests cannot run inline PTX; this checks its arithmetic, and
``test_tile_machine_code`` that ptxas compiles it."""

from __future__ import annotations

import itertools

import pytest
from gguf import quants as gguf_quants

pytest.importorskip("triton")

from autotune.cache_runtime.codebooks import IQ4_NL_CODES, MXFP4_CODES  # noqa: E402
from autotune.cache_runtime.triton_tile_parts import prmt_lookup4  # noqa: E402

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, c: int) -> int:
    """prmt.b32 (default mode): byte k of d is byte (c's nibble k & 7) of b:a, or that
    byte's sign replicated where the nibble's bit 3 is set."""
    source = ((b << 32) | a).to_bytes(8, "little")
    out = 0
    for k in range(4):
        selector = (c >> (4 * k)) & 15
        byte = source[selector & 7]
        if selector & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * k)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """lop3.b32: each bit is bit (4a + 2b + c) of the truth table ``lut``."""
    out = 0
    for i in range(8):
        if lut >> i & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out & MASK


def _run(asm: str, x: int) -> int:
    """$0 of the PTX block ``asm`` given $1 = x."""
    regs = {"$1": x}
    for statement in asm.strip().strip("{}").split(";"):
        statement = statement.strip()
        if not statement or statement.startswith(".reg"):
            continue
        op, operands = statement.split(None, 1)
        dest, *args = [arg.strip() for arg in operands.split(",")]
        v = [regs[arg] if arg in regs else int(arg, 0) for arg in args]
        name = op.split(".")[0]
        result = {"mov": lambda: v[0], "and": lambda: v[0] & v[1], "or": lambda: v[0] | v[1],
                  "shr": lambda: v[0] >> v[1], "mul": lambda: v[0] * v[1],
                  "prmt": lambda: _prmt(*v), "lop3": lambda: _lop3(*v)}[name]()
        regs[dest] = result & MASK
    return regs["$0"]


@pytest.mark.parametrize("codes, values", [(IQ4_NL_CODES, gguf_quants.IQ4_NL.kvalues),
                                           (MXFP4_CODES, gguf_quants.MXFP4.kvalues)], ids=["IQ4_NL", "MXFP4"])
def test_prmt_lookup_gives_the_code_book_for_every_4_nibbles(codes, values) -> None:
    asm = prmt_lookup4(codes).value
    for nibbles in itertools.product(range(16), repeat=4):
        packed = int.from_bytes(bytes(nibbles), "little")
        got = _run(asm, packed).to_bytes(4, "little")
        assert [int.from_bytes(got[k:k + 1], "little", signed=True) for k in range(4)] == \
            [int(values[q]) for q in nibbles], nibbles

"""The 16-entry code books of the non-linear 4-bit types, packed for table-free lookups.

IQ4_NL and IQ4_XS map a nibble to one of 16 int8 values, MXFP4 to a doubled e2m1 value.
Both the torch and the Triton path look a nibble q up as byte (q & 7) of one of two int64
constants (entries 0-7 and 8-15), so no table tensor has to exist on the device. The
values are gguf's own (``gguf.quants``).
"""

from __future__ import annotations

from gguf import quants as gguf_quants


def _packed(values: tuple[int, ...]) -> tuple[int, int]:
    """Entries 0-7 and 8-15 as the bytes of two signed int64 values (byte i = entry i)."""
    def pack(eight: tuple[int, ...]) -> int:
        word = sum((v & 0xFF) << (8 * i) for i, v in enumerate(eight))
        return word - (1 << 64) if word >= 1 << 63 else word

    return pack(values[:8]), pack(values[8:])


IQ4_NL_CODES = _packed(gguf_quants.IQ4_NL.kvalues)
MXFP4_CODES = _packed(gguf_quants.MXFP4.kvalues)

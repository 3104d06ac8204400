"""Parsing of the sizes and durations users type: ``16G``, ``16GiB``, ``12000M``, ``15m``."""

from __future__ import annotations

import re

from autotune.errors import AutotuneError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def _of(option: str | None) -> str:
    return f"{option}: " if option else ""


def parse_size(text: str, option: str | None = None) -> int:
    """Bytes from a size; K/M/G/T are binary (GiB) units, as VRAM is counted. ``option``, the
    flag it came from, begins any error message."""
    match = _SIZE.match(text)
    if not match:
        raise AutotuneError(
            f"{_of(option)}cannot read the size {text!r}: write a number and a unit, e.g. 16G, 16GiB or 12000M"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** _POWERS[unit])
    if size <= 0:
        raise AutotuneError(f"{_of(option)}the size {text!r} must be more than zero")
    return size


def parse_duration(text: str, option: str | None = None) -> float:
    """Seconds from a duration such as ``90s``, ``15m`` or ``2h`` (a bare number is seconds),
    more than zero. ``option``, the flag it came from, begins any error message."""
    match = _DURATION.match(text)
    if not match:
        raise AutotuneError(f"{_of(option)}cannot read the duration {text!r}: write e.g. 90s, 15m or 2h")
    factor = {"s": 1, "m": 60, "h": 3600}[(match.group(2) or "s").lower()]
    seconds = float(match.group(1)) * factor
    if seconds <= 0:
        raise AutotuneError(f"{_of(option)}the duration {text!r} must be more than zero")
    return seconds


def format_size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def size_text(n_bytes: int) -> str:
    """The exact size in the largest binary unit that divides it (``16G``, ``12000M``, bytes):
    ``parse_size`` reads it back to the same number."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n_bytes % 1024**power == 0:
            return f"{n_bytes // 1024**power}{unit}"
    return str(n_bytes)

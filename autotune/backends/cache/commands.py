"""Launch commands for a ``cache`` config, and the parser that reads them back.

Formats (``FORMATS``): ``serve``, an ``autotune serve MODEL --vram-cap 16G --eviction ...``
command line with every knob as a flag, shell-quoted with shlex; and ``json``
(``{"model": ..., "config": {...}}``, which ``autotune serve --config FILE`` reads too).
``parse_command`` turns either back into (normalized config, model path) exactly.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Callable

from autotune.backends.base import Config, ConfigError
from autotune.backends.cache.knobs import normalize
from autotune.backends.llama_cpp.commands import int_flag
from autotune.errors import AutotuneError
from autotune.units import parse_size

FORMATS = ("serve", "json")

# config key -> flag of `autotune serve`; the true-or-false knobs are switch pairs (SWITCHES).
FLAGS = {
    "vram_cap": "--vram-cap",
    "max_ctx": "--ctx",
    "eviction": "--eviction",
    "miss_mode": "--miss-mode",
    "rebalance_interval": "--rebalance-interval",
    "decay": "--decay",
    "prefetch_depth": "--prefetch-depth",
    "prefetch_engine": "--prefetch-engine",
    "prefill_bypass": "--prefill-bypass",
    "prefill_chunk": "--prefill-chunk",
    "slot_split": "--slot-split",
    "chunk_rounds": "--chunk-rounds",
    "gate_up_warps": "--gate-up-warps",
    "placement": "--placement",
}
SWITCHES = {"--learned-placement": ("learned_placement", True), "--no-learned-placement": ("learned_placement", False),
            "--lend-prefill-room": ("lend_prefill_room", True), "--no-lend-prefill-room": ("lend_prefill_room", False)}
NOT_KNOBS = ("--host", "--port", "--save-every")  # how the server runs: read, not part of the config


def size_text(n_bytes: int) -> str:
    """The exact size in the largest binary unit that divides it (``16G``, ``12000M``, bytes)."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n_bytes % 1024**power == 0:
            return f"{n_bytes // 1024**power}{unit}"
    return str(n_bytes)


def _model_word(model_path: Path | str) -> str:
    """A relative path starting with a dash would read as a flag: ``./`` keeps it a path."""
    text = str(model_path)
    return f"./{text}" if text.startswith("-") else text


def serve_argv(config: Config, model_path: Path | str) -> list[str]:
    c = normalize(config)
    argv = ["autotune", "serve", _model_word(model_path), "--vram-cap", size_text(c["vram_cap"])]
    for key, flag in FLAGS.items():
        if key == "placement" and c[key]:
            argv += [flag, c[key]]
        elif key not in ("vram_cap", "placement"):
            argv += [flag, repr(c[key]) if isinstance(c[key], float) else str(c[key])]
    argv += [flag for flag, (key, value) in SWITCHES.items() if c[key] == value]
    return argv


def format_command(config: Config, model_path: Path | str, fmt: str) -> str:
    if fmt == "serve":
        return shlex.join(serve_argv(config, model_path))
    if fmt == "json":
        return json.dumps({"model": str(model_path), "config": normalize(config)}, indent=2, ensure_ascii=False)
    raise ConfigError(f"unknown command format {fmt!r} for the cache backend; choose from: {', '.join(FORMATS)}")


# -- parsing ------------------------------------------------------------------


def _float(flag: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{flag} expects a number, not {value!r}") from None


def _size(flag: str, value: str) -> int:
    try:
        return parse_size(value)
    except AutotuneError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "vram_cap": _size, "max_ctx": int_flag, "rebalance_interval": int_flag, "prefetch_depth": int_flag,
    "prefill_bypass": int_flag, "prefill_chunk": int_flag,
    "decay": _float, "slot_split": _float, "eviction": lambda flag, value: value, "miss_mode": lambda flag, value: value,
    "prefetch_engine": lambda flag, value: value,
    "chunk_rounds": int_flag, "gate_up_warps": int_flag, "placement": lambda flag, value: value,
}
_KEY_OF_FLAG = {flag: key for key, flag in FLAGS.items()}


def parse_serve_argv(argv: list[str]) -> tuple[Config, Path]:
    """(normalized config, model path) of ``autotune serve MODEL --knob value ...``
    (``--flag=value`` and a ``--`` before the model read as a shell user means them)."""
    if len(argv) < 2 or Path(argv[0]).name != "autotune" or argv[1] != "serve":
        raise ConfigError("not an `autotune serve` or JSON command")
    parsed: Config = {}
    positional: list[str] = []
    words = iter(argv[2:])
    for word in words:
        flag, equals, inline = word.partition("=")
        if word == "--":
            positional += list(words)
        elif word in SWITCHES:
            key, value = SWITCHES[word]
            parsed[key] = value
        elif flag in _KEY_OF_FLAG or flag in NOT_KNOBS:
            raw = inline if equals else next(words, None)
            if raw is None:
                raise ConfigError(f"{flag} needs a value")
            if flag in _KEY_OF_FLAG:
                key = _KEY_OF_FLAG[flag]
                parsed[key] = _PARSERS[key](flag, raw)
        elif word.startswith("-"):
            raise ConfigError(f"autotune serve flag {word!r} is not a knob autotune reads")
        else:
            positional.append(word)
    if len(positional) != 1:
        raise ConfigError("the autotune serve command must name one model" +
                          (f", not {len(positional)}" if positional else ""))
    return normalize(parsed), Path(positional[0])


def parse_command(command: str) -> tuple[Config, Path]:
    """(normalized config, model path) of a command in any of ``FORMATS``."""
    text = command.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return normalize(data["config"]), Path(data["model"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not an autotune JSON config: {exc}") from None
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"cannot split the command: {exc}") from None
    return parse_serve_argv(argv)

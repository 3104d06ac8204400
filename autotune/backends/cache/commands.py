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

from autotune.backends.base import Config, ConfigError
from autotune.cache_runtime.cache_config import CACHE_KNOBS
from autotune.knob_schema import KnobSchema

FORMATS = ("serve", "json")
NOT_KNOBS = ("--host", "--port", "--save-every")  # how the server runs: read, not part of the config


def _model_word(model_path: Path | str) -> str:
    """A relative path starting with a dash would read as a flag: ``./`` keeps it a path."""
    text = str(model_path)
    return f"./{text}" if text.startswith("-") else text


def serve_argv(config: Config, model_path: Path | str, schema: KnobSchema = CACHE_KNOBS) -> list[str]:
    """``autotune serve MODEL`` and every knob's flag, in the schema's order."""
    c = schema.normalize(config)
    return ["autotune", "serve", _model_word(model_path), *(word for knob in schema.knobs
                                                           for word in knob.argv(c[knob.name]))]


def format_command(config: Config, model_path: Path | str, fmt: str, schema: KnobSchema = CACHE_KNOBS) -> str:
    if fmt == "serve":
        return shlex.join(serve_argv(config, model_path, schema))
    if fmt == "json":
        return json.dumps({"model": str(model_path), "config": schema.normalize(config)}, indent=2, ensure_ascii=False)
    raise ConfigError(f"unknown command format {fmt!r} for the cache backend; choose from: {', '.join(FORMATS)}")


# -- parsing ------------------------------------------------------------------


def _switches(schema: KnobSchema) -> dict[str, tuple[str, bool]]:
    """The true-or-false knobs' switches: flag -> (knob, the value it sets)."""
    return {flag: (knob.name, value) for knob in schema.knobs if knob.type is bool
            for flag, value in ((knob.option, True), (knob.negative, False))}


def parse_serve_argv(argv: list[str], schema: KnobSchema = CACHE_KNOBS) -> tuple[Config, Path]:
    """(normalized config, model path) of ``autotune serve MODEL --knob value ...``
    (``--flag=value`` and a ``--`` before the model read as a shell user means them)."""
    if len(argv) < 2 or Path(argv[0]).name != "autotune" or argv[1] != "serve":
        raise ConfigError("not an `autotune serve` or JSON command")
    switches = _switches(schema)
    valued = {knob.option: knob for knob in schema.knobs if knob.type is not bool}
    parsed: Config = {}
    positional: list[str] = []
    words = iter(argv[2:])
    for word in words:
        flag, equals, inline = word.partition("=")
        if word == "--":
            positional += list(words)
        elif word in switches:
            key, value = switches[word]
            parsed[key] = value
        elif flag in valued or flag in NOT_KNOBS:
            raw = inline if equals else next(words, None)
            if raw is None:
                raise ConfigError(f"{flag} needs a value")
            if flag in valued:
                parsed[valued[flag].name] = valued[flag].read(flag, raw)
        elif word.startswith("-"):
            raise ConfigError(f"autotune serve flag {word!r} is not a knob autotune reads")
        else:
            positional.append(word)
    if len(positional) != 1:
        raise ConfigError("the autotune serve command must name one model" +
                          (f", not {len(positional)}" if positional else ""))
    return schema.normalize(parsed), Path(positional[0])


def parse_command(command: str, schema: KnobSchema = CACHE_KNOBS) -> tuple[Config, Path]:
    """(normalized config, model path) of a command in any of ``FORMATS``."""
    text = command.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return schema.normalize(data["config"]), Path(data["model"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not an autotune JSON config: {exc}") from None
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"cannot split the command: {exc}") from None
    return parse_serve_argv(argv, schema)

"""The ``cache`` backend's knobs: the values the tuner searches and the canonical config form.

A config is ``CacheConfig``'s fields as a flat dict. ``normalize`` checks types and ranges
(a ``ConfigError`` for anything else) and puts knobs that cannot matter at one value, so two
configs that run the same way compare equal: ``static`` eviction never moves an expert
(miss mode, rebalance interval and decay unused), decay only weighs ``lfu_decay`` counts,
the slot split follows learned routing counts (none without ``learned_placement``), and
without prefetch nothing is copied by a prefetch engine. ``placement`` (a file of routing
counts) is no knob the tuner searches: a winner's stored config names the file its trials'
counts were frozen in.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any

from autotune.backends.base import Config, ConfigError
from autotune.cache_runtime.cache_config import (CHUNK_ROUNDS, EVICTION_RULES, GATE_UP_WARPS, MISS_MODES,
                                                 PREFETCH_ENGINES, CacheConfig)

KEYS = tuple(f.name for f in fields(CacheConfig))
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(CacheConfig) if f.name != "vram_cap"}
INT_KEYS = ("vram_cap", "rebalance_interval", "prefetch_depth", "prefill_bypass", "prefill_chunk", "max_ctx",
            "chunk_rounds", "gate_up_warps")
AT_LEAST_ZERO = ("rebalance_interval", "prefetch_depth", "prefill_bypass")
FLOAT_KEYS = ("decay", "slot_split")
BOOL_KEYS = ("learned_placement", "lend_prefill_room")

# The search space (see CacheBackend.suggest).
REBALANCE_INTERVALS = (16, 32, 64, 128, 256)
DECAYS = (0.5, 0.8, 0.9, 0.95, 0.99)
PREFETCH_DEPTHS = (0, 4)  # inclusive range; depth 4 with DMA copies was the best at 12 GiB (run 7)
PREFILL_BYPASSES = (0, 8, 32, 128, 512)
SLOT_SPLIT_STEP = 0.25
SEARCHED_CHUNK_ROUNDS = (1, 2)
SEARCHED_GATE_UP_WARPS = (4, 8)


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, not {value}")
    return value


def _float(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a number, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key} must be within [{low:g}, {high:g}], not {value}")
    return float(value)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def normalize(config: Config) -> Config:
    """Every knob, checked and in canonical form; ``vram_cap`` is required."""
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown cache config key(s): {', '.join(unknown)}")
    if "vram_cap" not in config:
        raise ConfigError("a cache config needs vram_cap (bytes for the whole process)")
    c = {**DEFAULTS, **config}
    out: Config = {key: _int(key, c[key], 0 if key in AT_LEAST_ZERO else 1) for key in INT_KEYS}
    out["decay"] = _float("decay", c["decay"], 0.0, 1.0)
    out["slot_split"] = _float("slot_split", c["slot_split"], 0.0, 1.0)
    out["eviction"] = _choice("eviction", c["eviction"], EVICTION_RULES)
    out["miss_mode"] = _choice("miss_mode", c["miss_mode"], MISS_MODES)
    out["prefetch_engine"] = _choice("prefetch_engine", c["prefetch_engine"], PREFETCH_ENGINES)
    for key, allowed in (("chunk_rounds", CHUNK_ROUNDS), ("gate_up_warps", GATE_UP_WARPS)):
        if out[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, not {out[key]}")
    for key in BOOL_KEYS:
        if not isinstance(c[key], bool):
            raise ConfigError(f"{key} must be true or false, not {c[key]!r}")
        out[key] = c[key]
    if out["eviction"] == "static":
        out.update(miss_mode="zero_copy", rebalance_interval=0)
    if out["eviction"] != "lfu_decay":
        out["decay"] = DEFAULTS["decay"]
    placement = c["placement"]
    if not isinstance(placement, str):
        raise ConfigError(f"placement must be a file path, not {placement!r}")
    # absolute, so a stored config names the same file from any working directory
    out["placement"] = os.path.abspath(placement) if placement and out["learned_placement"] else ""
    if not out["learned_placement"]:
        out["slot_split"] = 0.0
    if out["prefetch_depth"] == 0:
        out["prefetch_engine"] = DEFAULTS["prefetch_engine"]
    return {key: out[key] for key in KEYS}


def cache_config(config: Config) -> CacheConfig:
    """The runtime's record of a config."""
    return CacheConfig.from_dict(normalize(config))

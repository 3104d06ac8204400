"""The ``cache`` backend's configs: ``CacheConfig``'s knobs (``cache_config.CACHE_KNOBS``) as a
flat dict, checked and in canonical form (``KnobSchema.normalize``: a ``ConfigError`` for a bad
value, knobs that cannot matter at one value)."""

from __future__ import annotations

from autotune.backends.base import Config
from autotune.cache_runtime.cache_config import CACHE_KNOBS, CacheConfig

DEFAULTS: Config = CACHE_KNOBS.defaults


def normalize(config: Config) -> Config:
    """Every knob, checked and in canonical form; ``vram_cap`` is required."""
    return CACHE_KNOBS.normalize(config)


def cache_config(config: Config) -> CacheConfig:
    """The runtime's record of a config."""
    return CacheConfig.from_dict(normalize(config))

"""The llama.cpp backends' config: knob names, defaults, validation and expert placement.

A config is a flat dict (what Optuna samples and the database stores). After ``normalize``
every key below is present, except ``cpu_moe_layers`` (present only when not empty) and
``n_ctx`` (absent: the workload's context in a trial, llama.cpp's default in a command):

- ``n_gpu_layers``: layers in VRAM as llama.cpp's ``-ngl`` counts them (the output layer is
  the first one offloaded; ``n_layers + 1`` or more means all)
- ``n_cpu_moe``: the experts of the first N layers stay on the CPU (``--n-cpu-moe``)
- ``cpu_moe_layers``: further layers whose experts stay on the CPU, any set (an ``-ot`` regex)
- ``flash_attn``, ``op_offload``, ``use_mmap``: booleans
- ``n_batch``, ``n_ubatch``, ``n_threads``, ``n_threads_batch``, ``n_ctx``: positive integers
- ``type_k``, ``type_v``: KV-cache types, one of ``KV_TYPES``
"""

from __future__ import annotations

import os
from typing import Any

from autotune.backends.base import Config, ConfigError

KV_TYPES = ("f16", "q8_0", "q4_0")
# llama.cpp's LLM_FFN_EXPS_REGEX (common/common.h): the routed-expert tensors of a block.
EXPERTS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"

BOOL_KEYS = ("flash_attn", "op_offload", "use_mmap")
INT_KEYS = ("n_gpu_layers", "n_cpu_moe", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "n_ctx")
KEYS = INT_KEYS + BOOL_KEYS + ("type_k", "type_v", "cpu_moe_layers")
# What llama.cpp fixes when it loads the model; configs that share these share a loaded model.
LOAD_KEYS = ("n_gpu_layers", "n_cpu_moe", "cpu_moe_layers", "use_mmap")

DEFAULTS: Config = {
    "n_gpu_layers": 99,
    "n_cpu_moe": 0,
    "flash_attn": True,
    "n_batch": 2048,
    "n_ubatch": 512,
    "type_k": "f16",
    "type_v": "f16",
    "op_offload": True,
    "use_mmap": True,
}


def default_threads() -> int:
    """llama.cpp's default: the physical cores (all logical CPUs where psutil is missing)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def cpu_expert_layers(config: Config) -> list[int]:
    """Every layer whose experts the config keeps on the CPU, sorted."""
    return sorted(set(range(config.get("n_cpu_moe", 0))) | set(config.get("cpu_moe_layers", ())))


def layers_regex(layers: list[int]) -> str:
    """One ``-ot`` pattern for the experts of these layers (one layer, or an alternation)."""
    block = str(layers[0]) if len(layers) == 1 else "(" + "|".join(map(str, layers)) + ")"
    return rf"blk\.{block}{EXPERTS_REGEX}"


def cpu_expert_patterns(config: Config) -> list[str]:
    """The tensor-name regexes whose tensors go to the CPU buffer, as llama.cpp builds them:
    one per layer for ``n_cpu_moe`` (as ``--n-cpu-moe`` does), one alternation for the rest."""
    config = normalize(config)
    patterns = [layers_regex([layer]) for layer in range(config["n_cpu_moe"])]
    if config.get("cpu_moe_layers"):
        patterns.append(layers_regex(config["cpu_moe_layers"]))
    return patterns


def _check_int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, not {value!r}")
    if value < low:
        raise ConfigError(f"{key} must be at least {low}, not {value}")
    return value


def normalize(config: Config) -> Config:
    """The config with defaults filled in, checked, and its expert placement in canonical form:
    ``n_cpu_moe`` the longest run of CPU layers from layer 0, ``cpu_moe_layers`` the others."""
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown llama.cpp config key(s): {', '.join(unknown)}")
    out: Config = {**DEFAULTS, **config}
    out.setdefault("n_threads", default_threads())
    out.setdefault("n_threads_batch", out["n_threads"])
    for key in INT_KEYS:
        if key in out:
            out[key] = _check_int(key, out[key], 0 if key in ("n_gpu_layers", "n_cpu_moe") else 1)
    for key in BOOL_KEYS:
        if not isinstance(out[key], bool):
            raise ConfigError(f"{key} must be true or false, not {out[key]!r}")
    for key in ("type_k", "type_v"):
        if out[key] not in KV_TYPES:
            raise ConfigError(f"{key} must be one of {', '.join(KV_TYPES)}, not {out[key]!r}")
    if out["n_ubatch"] > out["n_batch"]:
        raise ConfigError(f"n_ubatch {out['n_ubatch']} is larger than n_batch {out['n_batch']}")
    if out["type_v"] != "f16" and not out["flash_attn"]:
        raise ConfigError(f"a quantized V cache ({out['type_v']}) needs flash_attn")
    layers = out.pop("cpu_moe_layers", None) or []
    if not isinstance(layers, (list, tuple)):
        raise ConfigError(f"cpu_moe_layers must be a list of layer numbers, not {layers!r}")
    for layer in layers:
        _check_int("a layer in cpu_moe_layers", layer, 0)
    on_cpu = cpu_expert_layers({"n_cpu_moe": out["n_cpu_moe"], "cpu_moe_layers": layers})
    prefix = next((i for i, layer in enumerate(on_cpu) if layer != i), len(on_cpu))
    out["n_cpu_moe"] = prefix
    if on_cpu[prefix:]:
        out["cpu_moe_layers"] = on_cpu[prefix:]
    return {key: out[key] for key in KEYS if key in out}

"""autotune's own MoE runtime: GGUF weights kept quantized, fused Triton kernels, one CUDA
graph per decoded token, experts reached through a device table of addresses.

``Engine`` is the entry point (``engine.py``); ``families`` holds each model family's forward
pass, written against the blocks' contract ``ops.Ops``; ``torch_ops`` is the readable
definition of those blocks and the CPU path, ``triton_ops`` the GPU's; ``platforms`` chooses
the device's and the kernels' implementations once; ``reference`` is an independent check. The expert
cache's knobs are ``CacheConfig``; ``budget.predict_peak_vram`` predicts a config's peak VRAM.
The package imports torch only when ``Engine`` or ``RoutingTrace`` is first used, so the
tuner's process can plan budgets without it.
"""

from typing import Any

from autotune.cache_runtime.cache_config import CacheConfig

__all__ = ["CacheConfig", "Engine", "RoutingTrace"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from autotune.cache_runtime.engine import Engine

        return Engine
    if name == "RoutingTrace":
        from autotune.cache_runtime.routing import RoutingTrace

        return RoutingTrace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""autotune's own MoE runtime: GGUF weights kept quantized, fused Triton kernels, one CUDA
graph per decoded token, experts reached through a device table of addresses.

``Engine`` is the entry point (``engine.py``); ``torch_ops`` is the readable definition of
the forward pass and the CPU path; ``reference`` is an independent check of both.
"""

from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.routing import RoutingTrace

__all__ = ["Engine", "RoutingTrace"]

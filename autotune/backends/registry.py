"""Backends by name. A ``package.module:Class`` spec loads any other (plugins, test backends)."""

from __future__ import annotations

import importlib

from autotune.backends.base import Backend
from autotune.errors import AutotuneError
from autotune.isolation.gpu import TrialGpu

BUILTIN = {
    "llama_cpp": "autotune.backends.llama_cpp.backend:LlamaCppBackend",
    "llama_bench": "autotune.backends.llama_cpp.bench:LlamaBenchBackend",
    "cache": "autotune.backends.cache.backend:CacheBackend",
}


def get_backend(name: str, llama_bench: str | None = None, gpu: TrialGpu = TrialGpu()) -> Backend:
    """The backend of that name (or ``module:Class`` spec), its trials on ``gpu``.
    ``llama_bench``: the executable the ``llama_bench`` backend runs (None: the one it finds)."""
    spec = BUILTIN.get(name, name)
    if ":" not in spec:
        raise AutotuneError(f"unknown backend {name!r}; choose from: {', '.join(BUILTIN)}")
    module_name, _, class_name = spec.partition(":")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise AutotuneError(f"cannot load backend {name!r}: {exc}") from None
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise AutotuneError(f"backend {name!r} is not a subclass of autotune.backends.base.Backend")
    missing = sorted(backend_class.__abstractmethods__)
    if missing:  # found now, not by the first trial that needs it
        raise AutotuneError(f"backend {name!r} lacks {', '.join(missing)} (see autotune.backends.base.Backend)")
    backend = backend_class(llama_bench) if name == "llama_bench" else backend_class()
    backend.gpu = gpu
    return backend

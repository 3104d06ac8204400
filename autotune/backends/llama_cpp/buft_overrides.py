"""Tensor buffer-type overrides for llama-cpp-python, whose ``Llama`` has no keyword for them.

``buft_overrides`` builds the null-terminated ``llama_model_tensor_buft_override`` array that
``llama_model_params.tensor_buft_overrides`` points to (what ``-ot`` and ``--n-cpu-moe`` build
in llama.cpp's tools); ``cpu_buffer_type`` is the CPU device's buffer type from ggml's
registry. ``cpu_experts`` lets a plain ``Llama(...)`` use them, as exported commands do::

    with cpu_experts(n_cpu_moe=12):
        llm = llama_cpp.Llama(model_path="model.gguf", n_gpu_layers=99, flash_attn=True)

llama.cpp reads the overrides only while it loads the model, so the array may go once
``Llama(...)`` has returned. Importing this module imports llama_cpp.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Iterable, Iterator

import llama_cpp.llama_cpp as llama_api  # the module Llama takes its default params from

from autotune.backends.llama_cpp.knobs import cpu_expert_patterns

GGML_BACKEND_DEVICE_TYPE_CPU = 0


class BuftOverride(ctypes.Structure):
    """``struct llama_model_tensor_buft_override`` (llama.h)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def cpu_buffer_type() -> int:
    """The CPU device's buffer type from ggml's backend registry (what ``-ot ...=CPU`` names).

    ggml is reached through libllama's handle: wheels ship libggml.so, .so.0 and .so.0.x as
    separate copies, and opening one by path (as ``llama_cpp._ggml`` does) would load a second
    ggml, with its own registry, beside llama.cpp's.
    """
    ggml = llama_api._lib
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    device = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:
        raise RuntimeError("ggml's registry has no CPU device")
    return ggml.ggml_backend_dev_buffer_type(device)


def buft_overrides(patterns: list[str], buft: int) -> ctypes.Array[BuftOverride]:
    """The override array for these tensor-name regexes; it keeps its pattern strings alive."""
    if len(patterns) >= llama_api.llama_max_tensor_buft_overrides():
        raise RuntimeError(f"{len(patterns)} tensor overrides: more than llama.cpp accepts")
    entries = (BuftOverride * (len(patterns) + 1))()  # the last one stays null: the terminator
    for entry, pattern in zip(entries, patterns):
        entry.pattern = pattern.encode()
        entry.buft = buft
    return entries


@contextmanager
def cpu_experts(n_cpu_moe: int = 0, layers: Iterable[int] = ()) -> Iterator[ctypes.Array[BuftOverride]]:
    """While active, ``llama_cpp.Llama`` keeps the experts of the first ``n_cpu_moe`` layers
    and of ``layers`` on the CPU."""
    patterns = cpu_expert_patterns({"n_cpu_moe": n_cpu_moe, "cpu_moe_layers": list(layers)})
    overrides = buft_overrides(patterns, cpu_buffer_type())
    default_params = llama_api.llama_model_default_params

    def params_with_overrides() -> llama_api.llama_model_params:
        params = default_params()
        params.tensor_buft_overrides = ctypes.addressof(overrides)
        return params

    llama_api.llama_model_default_params = params_with_overrides
    try:
        yield overrides
    finally:
        llama_api.llama_model_default_params = default_params


def _discard_log(_level: int, _text: bytes, _user_data: object) -> None:
    """A log sink that drops llama.cpp's messages."""


_QUIET_LOG = llama_api.llama_log_callback(_discard_log)  # module-level: llama.cpp keeps calling it


def silence_llama_log() -> None:
    """Route llama.cpp's log to a sink of our own instead of llama_cpp's Python logger
    (loads with that logger installed were seen crashing the CUDA build's loader, while
    processes with their own sink, as the trial children have, load the same file fine)."""
    llama_api.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))

"""Child side of the llama_cpp engine: load a model once, then measure configs as llama-bench does.

Only trial children (``autotune.isolation.child_main``) import this module, and llama_cpp with it.
``setup`` loads the model with its expert placement: tensor buffer-type
overrides set on ``llama_model_params`` through the C API (see ``llama_python``). ``run`` creates a
context for one config, then, as llama-bench's pp and tg tests, measures prefill of r prompts
(batches of n_batch) after a warm-up run, and decode of N tokens (one ``llama_decode`` per
token, no sampling) r times after one warm-up token; the times are llama.cpp's own perf
counters. The prompts are the workload's token ids (``Workload.trial_inputs``: request i is
prompt i mod their number), and each decode run follows its request's prompt in the KV cache,
as a request's decode does (untimed); without prompts they are P random tokens and decode
starts from an empty KV cache, as llama-bench's. Decode feeds random tokens either way:
llama.cpp computes every expert a token routes to where that expert lives, so which token it
decodes does not change its speed. llama.cpp's log goes
to stderr (the parent keeps its tail); the buffer sizes it logs and the tensors it moved to
the CPU come back with the results.
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from autotune.backends.llama_cpp.buft_overrides import buft_overrides, cpu_buffer_type

GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_CONT = 1, 5  # ggml.h's enum ggml_log_level (ERROR is 4)
KV_TYPE_IDS = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}

_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS) buffer size =\s*([\d.]+) MiB")
_OVERRIDE = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")


@dataclass
class LlamaLog:
    """llama.cpp's log sink: echoes to stderr (debug lines only while ``debug``) and keeps
    the buffer sizes and tensor overrides it reports."""

    debug: bool = False
    buffers_mib: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    _level: int = 0
    _pending: str = ""

    def __call__(self, level: int, text: bytes, _user_data: Any) -> None:
        if level != GGML_LOG_LEVEL_CONT:
            self._level = level
        if self._level == GGML_LOG_LEVEL_DEBUG and not self.debug:
            return
        chunk = text.decode("utf-8", errors="replace")
        sys.stderr.write(chunk)
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if match := _BUFFER.search(line):
                key = f"{match.group(2)}:{match.group(1)}"
                self.buffers_mib[key] = self.buffers_mib.get(key, 0.0) + float(match.group(3))
            elif match := _OVERRIDE.search(line):
                self.overrides[match.group(1)] = match.group(2)


@dataclass
class Loaded:
    model: Any
    overrides: Any  # the ctypes array llama.cpp was given; kept alive with the model
    log: LlamaLog
    callback: Any  # the ctypes callback; kept alive while llama.cpp may call it


def _install_log() -> tuple[LlamaLog, Any]:
    log = LlamaLog(debug=True)
    callback = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return log, callback


def setup(common: dict[str, Any]) -> tuple[Loaded, dict[str, Any]]:
    """Load the model: ``common`` has model_path, n_gpu_layers, use_mmap, cpu_patterns."""
    log, callback = _install_log()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = common["n_gpu_layers"]
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if common["use_mmap"] else llama_cpp.LLAMA_LOAD_MODE_NONE
    overrides = None
    if common["cpu_patterns"]:
        overrides = buft_overrides(common["cpu_patterns"], cpu_buffer_type())
        params.tensor_buft_overrides = ctypes.addressof(overrides)
    started = time.perf_counter()
    model = llama_cpp.llama_model_load_from_file(os.fsencode(common["model_path"]), params)
    load_seconds = time.perf_counter() - started
    if not model:
        raise RuntimeError("llama.cpp could not load the model (its log is above)")
    log.debug = False
    info = {
        "load_seconds": load_seconds,
        "extra": {
            "model_buffers_mib": dict(log.buffers_mib),
            "cpu_overrides": dict(log.overrides),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        },
    }
    return Loaded(model, overrides, log, callback), info


def _context_params(config: dict[str, Any]) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = config["n_ctx"]
    params.n_batch = config["n_batch"]
    params.n_ubatch = config["n_ubatch"]
    params.n_threads = config["n_threads"]
    params.n_threads_batch = config["n_threads_batch"]
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if config["flash_attn"] else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.type_k = KV_TYPE_IDS[config["type_k"]]
    params.type_v = KV_TYPE_IDS[config["type_v"]]
    params.op_offload = config["op_offload"]
    params.no_perf = False
    return params


class _Bench:
    """llama-bench's test_prompt and test_gen on one context."""

    def __init__(self, model: Any, ctx: Any, n_batch: int):
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.ctx, self.n_batch = ctx, n_batch
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.rng = random.Random(0)

    def _decode(self, tokens: list[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for a batch of {len(tokens)} tokens")

    def random_tokens(self, n: int, first: bool) -> list[int]:
        """``n`` random tokens; ``first``: they start a sequence (with BOS where the vocabulary asks)."""
        tokens = [self.rng.randrange(self.n_vocab) for _ in range(n)]
        if first and self.bos is not None:
            tokens[0] = self.bos
        return tokens

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, False)

    def prompt(self, tokens: list[int]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            self._decode(tokens[start:start + self.n_batch])
        llama_cpp.llama_synchronize(self.ctx)

    def generate(self, n_gen: int, first: bool) -> None:
        """Decode ``n_gen`` tokens one at a time; ``first``: the KV cache is empty."""
        token = self.random_tokens(1, first)[0]
        for _ in range(n_gen):
            self._decode([token])
            llama_cpp.llama_synchronize(self.ctx)
            token = self.rng.randrange(self.n_vocab)

    def perf(self) -> Any:
        return llama_cpp.llama_perf_context(self.ctx)


def _prefill_tps(bench: _Bench, tokens: list[int]) -> float:
    """llama.cpp counts a one-token prompt among its decoded tokens, a longer one among its prompt tokens."""
    bench.clear()
    llama_cpp.llama_perf_context_reset(bench.ctx)
    bench.prompt(tokens)
    perf = bench.perf()
    if len(tokens) == 1:
        return 1e3 / perf.t_eval_ms
    if perf.n_p_eval != len(tokens):
        raise RuntimeError(f"llama.cpp counted {perf.n_p_eval} prompt tokens, expected {len(tokens)}")
    return 1e3 * len(tokens) / perf.t_p_eval_ms


def _decode_tps(bench: _Bench, context: list[int], n_gen: int) -> float:
    """Decode after ``context`` (untimed) in the KV cache."""
    bench.clear()
    bench.prompt(context)
    llama_cpp.llama_perf_context_reset(bench.ctx)
    bench.generate(n_gen, first=not context)
    perf = bench.perf()
    if perf.n_eval != n_gen:
        raise RuntimeError(f"llama.cpp counted {perf.n_eval} decoded tokens, expected {n_gen}")
    return 1e3 * n_gen / perf.t_eval_ms


def _measure(bench: _Bench, prompts: list[list[int]], contexts: list[list[int]], n_gen: int) -> dict[str, list[float]]:
    """As llama-bench's pp and tg tests: each phase warmed up (a prompt run, one generated
    token), then repeated, so no repetition pays for switching between batch shapes. Prefill
    of each of ``prompts`` (none where they are empty: a decode-only workload); decode after
    each of ``contexts``."""
    prefill, decode = [], []
    if prompts[0]:
        bench.prompt(prompts[0])
        prefill = [_prefill_tps(bench, tokens) for tokens in prompts]
    if n_gen:
        bench.clear()
        bench.prompt(contexts[0])
        bench.generate(1, first=not contexts[0])
        decode = [_decode_tps(bench, context, n_gen) for context in contexts]
    return {"prefill_tps": prefill, "decode_tps": decode}


def run(loaded: Loaded, item: dict[str, Any]) -> dict[str, Any]:
    """Measure one normalized config (``item["config"]``) for ``item["workload"]``."""
    config, workload = item["config"], item["workload"]
    loaded.log.buffers_mib = {}
    ctx = llama_cpp.llama_init_from_model(loaded.model, _context_params(config))
    if not ctx:
        raise RuntimeError("llama.cpp could not create the context (its log is above)")
    try:
        bench = _Bench(loaded.model, ctx, config["n_batch"])
        prompts = workload["prompts"] or [bench.random_tokens(workload["n_prompt"], first=True)
                                          for _ in range(workload["repetitions"])]
        contexts = workload["prompts"] or [[] for _ in prompts]  # llama-bench's tg: from an empty KV cache
        figures = _measure(bench, prompts, contexts, workload["n_gen"])
    finally:
        llama_cpp.llama_free(ctx)  # before reporting: the next item's VRAM peak starts clean
    return {**figures, "extra": {"context_buffers_mib": dict(loaded.log.buffers_mib),
                                 "request_prompt_tokens": list(map(len, prompts))}}

"""Measure which experts a GGUF model really routes to, by running it in llama.cpp.

llama.cpp names the top-k expert ids of layer ``il`` ``ffn_moe_topk-il`` in its graph;
an eval callback copies them out while one sequence of random tokens is decoded in order,
chunk by chunk through the KV cache, so each token attends to all before it (temporal
locality needs that). From the trace follow expert popularity per layer, the miss rate of
a static placement that holds the most frequent experts, and the statistics published for
real models (``autotune.routing_stats``): top share, adjacent-token overlap, the LRU curve.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.errors import AutotuneError
from autotune.model_info import inspect_model
from autotune.routing_stats import adjacent_overlap, lru_hit_rates, top_share
from autotune.synth.real_routing import MIN_EXPERTS, RoutingTargets
from autotune.synth.skew import PLACEMENT_FRACTION, static_placement_miss_rate

TOPK_PREFIX = b"ffn_moe_topk-"
# Leading fields of struct ggml_tensor (stable across ggml versions): type, buffer, ne[4], nb[4].
_NE_OFFSET, _NB_OFFSET = 16, 48
CHUNK_TOKENS = 512  # decoded per llama_decode call; the sequence runs on through the KV cache


@dataclass
class RoutingTrace:
    experts: np.ndarray  # (layers, tokens, k) expert ids chosen per token
    n_expert: int

    def counts(self, tokens: slice = slice(None)) -> np.ndarray:
        picked = self.experts[:, tokens, :]
        return np.stack([np.bincount(layer.ravel(), minlength=self.n_expert) for layer in picked])

    def in_sample_miss_rate(self, fraction: float = PLACEMENT_FRACTION) -> float:
        """Miss rate of the placement chosen from the very tokens it is scored on."""
        return static_placement_miss_rate(self.counts(), fraction)

    def held_out_miss_rate(self, fraction: float = PLACEMENT_FRACTION) -> float:
        """Placement chosen from the first half of the tokens, scored on the second half."""
        half = self.experts.shape[1] // 2
        calib, test = self.counts(slice(None, half)), self.counts(slice(half, None))
        slots = int(round(fraction * self.n_expert))
        placed = np.argsort(-calib, axis=1)[:, :slots]
        hits = np.take_along_axis(test, placed, axis=1).sum()
        return float(1.0 - hits / test.sum())

    @property
    def targets(self) -> RoutingTargets:
        return RoutingTargets(self.n_expert, self.experts.shape[2])

    def top_share(self) -> np.ndarray:
        """Per layer, the share of selections to the top n/8 experts (top-16 of 128)."""
        return top_share(self.experts, self.n_expert, self.targets.top)

    def adjacent_overlap(self) -> float:
        return adjacent_overlap(self.experts, self.n_expert)

    def lru_hit_rates(self) -> dict[int, float]:
        """Per-layer LRU hit rate at the slot counts the published figures scale to."""
        return lru_hit_rates(self.experts, self.n_expert, self.targets.lru_slots)

    def summary(self) -> str:
        n_layers, n_tokens, k = self.experts.shape
        slots = int(round(PLACEMENT_FRACTION * self.n_expert))
        text = (
            f"routing measured with llama.cpp over a sequence of {n_tokens} random tokens, {n_layers} layers, "
            f"top-{k} of {self.n_expert}: a frequency-calibrated static placement of {slots}/{self.n_expert} "
            f"experts per layer misses {100 * self.in_sample_miss_rate():.1f}% of activations in sample, "
            f"{100 * self.held_out_miss_rate():.1f}% held out (uniform routing: about "
            f"{100 * (1 - PLACEMENT_FRACTION):.0f}%); adjacent tokens share {100 * self.adjacent_overlap():.0f}% "
            f"of their experts"
        )
        if self.n_expert < MIN_EXPERTS:
            return text  # the published figures do not scale to so few experts
        shares = self.top_share()
        lru = " / ".join(f"{100 * rate:.0f}%" for rate in self.lru_hit_rates().values())
        return (
            f"{text}; the top {self.targets.top} experts take {100 * shares.min():.0f}-{100 * shares.max():.0f}% "
            f"of a layer's selections, per-layer LRU at {'/'.join(map(str, self.targets.lru_slots))} slots hits {lru}"
        )


class _TopkCollector:
    """The eval callback: asks for the top-k tensors and copies each one out."""

    def __init__(self, ggml: ctypes.CDLL, n_layers: int):
        self.ggml = ggml
        self.per_layer: list[list[np.ndarray]] = [[] for _ in range(n_layers)]

    def __call__(self, tensor: int, ask: bool, _user_data: int) -> bool:
        name = self.ggml.ggml_get_name(tensor)
        if not name.startswith(TOPK_PREFIX):
            return False if ask else True
        if ask:
            return True
        ne = (ctypes.c_int64 * 4).from_address(tensor + _NE_OFFSET)
        nb = (ctypes.c_size_t * 4).from_address(tensor + _NB_OFFSET)
        if self.ggml.ggml_nelements(tensor) != ne[0] * ne[1] * ne[2] * ne[3]:
            raise AutotuneError("unexpected ggml_tensor layout: cannot read the routing trace")
        size = self.ggml.ggml_nbytes(tensor)
        raw = (ctypes.c_uint8 * size)()
        self.ggml.ggml_backend_tensor_get(tensor, raw, 0, size)
        ids = np.lib.stride_tricks.as_strided(
            np.frombuffer(raw, dtype=np.int32), shape=(ne[1], ne[0]), strides=(nb[1], nb[0])
        )
        self.per_layer[int(name[len(TOPK_PREFIX):])].append(ids.copy())
        return True


def _load_ggml(llama_cpp_module: object) -> ctypes.CDLL:
    """ggml's functions from the library llama_cpp already loaded.

    Wheels ship libggml-base.so, .so.0 and .so.0.x as separate copies: opening one by path
    would load a second ggml beside llama.cpp's (seen crashing the CUDA build), so the
    symbols are looked up through libllama's handle, which resolves to its own ggml.
    """
    ggml = llama_cpp_module.llama_cpp._lib
    ggml.ggml_get_name.restype = ctypes.c_char_p
    ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_nbytes.restype = ctypes.c_size_t
    ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
    ggml.ggml_nelements.restype = ctypes.c_int64
    ggml.ggml_nelements.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_tensor_get.restype = None
    ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return ggml


def _batch_with_all_logits(llama_cpp: object, tokens: list[int], first_pos: int) -> object:
    """A batch of one sequence's tokens from ``first_pos`` on, asking logits for every token
    so the last layer routes every token too."""
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = first_pos + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    return batch


def measure_routing(model_path: str | Path, n_tokens: int = 256, seed: int = 0, n_gpu_layers: int = 99) -> RoutingTrace:
    """Decode one sequence of ``n_tokens`` random tokens, in order, and record every layer's
    expert choice per token."""
    profile = inspect_model(model_path)
    if not profile.is_moe:
        raise AutotuneError(f"{model_path}: a dense model has no routing to measure")
    try:
        import llama_cpp
    except ImportError:
        raise AutotuneError("measuring routing needs llama-cpp-python (pip install llama-cpp-python==0.3.36)") from None

    ggml = _load_ggml(llama_cpp)
    collector = _TopkCollector(ggml, profile.n_layers)
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector)
    llama_cpp.llama_backend_init()
    from autotune.backends.llama_cpp.buft_overrides import silence_llama_log

    silence_llama_log()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = n_gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
    # An explicit load mode: the default ("auto") crashed the CUDA build's loader here, while
    # the llama_cpp backend, which sets it, loads the same file fine.
    model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), model_params)
    if not model:
        raise AutotuneError(f"{model_path}: llama.cpp could not load the model")
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = n_tokens
    ctx_params.n_batch = ctx_params.n_ubatch = min(n_tokens, CHUNK_TOKENS)
    ctx_params.cb_eval = callback
    ctx_params.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    try:
        tokens = np.random.default_rng(seed).integers(0, profile.n_vocab, n_tokens).tolist()
        for first in range(0, n_tokens, CHUNK_TOKENS):
            batch = _batch_with_all_logits(llama_cpp, tokens[first : first + CHUNK_TOKENS], first)
            try:
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise AutotuneError(f"{model_path}: llama.cpp failed to decode the routing sequence")
            finally:
                llama_cpp.llama_batch_free(batch)
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    # the MoE layers only: leading dense layers and NextN layers route nothing
    experts = np.stack([np.concatenate(chunks) for chunks in collector.per_layer if chunks])
    return RoutingTrace(experts=experts, n_expert=profile.n_expert)

"""The DeepSeek-V2/V3 family (``deepseek2``) on the CPU: the runtime against llama.cpp itself on
the deepseek2-tiny preset (V2-Lite-like: latent attention with q directly, softmax routing,
two shared experts' width) and the deepseek3-tiny preset (V3-like: low-rank q, YaRN, sigmoid
routing with selection bias within the best expert groups, renormalized and scaled), and
the tuner's readers on those files.

Each step's logits must match llama.cpp's to 1e-3 of their largest value. Measured: 4.1e-4
(deepseek2-tiny) and 4.9e-4 (deepseek3-tiny) with the right model; on deepseek3-tiny 0.062
with NeoX RoPE, 0.046 without YaRN, 0.046 without the mscale in the scores, 0.12 with a
softmax gate, 0.065 without the selection bias, 0.10 without the expert groups, 0.067
unscaled, 0.093 without the shared expert (``test_logits_catch_a_wrong_part``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from autotune.backends.cache.backend import CacheBackend
from autotune.cache_runtime.budget import MLA_ABSORBED, kv_bytes, model_sizes
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.hparams import read_config
from autotune.cache_runtime.mla import kq_scale
from autotune.cache_runtime.rope_scaling import RopeScaling
from autotune.cache_runtime.routing import best_groups_only
from autotune.cache_runtime.weights import QTensor
from autotune.model_info import inspect_model
from tests.llama_cpp_reference import (assert_matches_llama_cpp, llama_cpp_greedy, runtime_logits, worst_logit_error,
                                       wrong_part_error)

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MAX_CTX = 64


@pytest.fixture(scope="module")
def v2_reference(deepseek2_model: Path):
    return llama_cpp_greedy(deepseek2_model)


@pytest.fixture(scope="module")
def v3_reference(deepseek3_model: Path):
    return llama_cpp_greedy(deepseek3_model)


@pytest.fixture(scope="module")
def v2_engine(deepseek2_model: Path) -> Engine:
    return Engine(deepseek2_model, device="cpu", kernels="torch", max_ctx=MAX_CTX)


@pytest.fixture(scope="module")
def v3_engine(deepseek3_model: Path) -> Engine:
    return Engine(deepseek3_model, device="cpu", kernels="torch", max_ctx=MAX_CTX)


def test_the_files_read_as_deepseek2_with_latent_attention(deepseek2_model: Path, deepseek3_model: Path) -> None:
    v2, v3 = read_config(deepseek2_model), read_config(deepseek3_model)
    for cfg in (v2, v3):
        assert (cfg.arch, cfg.n_layers, cfg.n_dense_lead, cfg.rope_neox) == ("deepseek2", 4, 1, False)
        assert (cfg.head_dim, cfg.v_dim, cfg.rope_dims, cfg.kv_lora_rank) == (96, 64, 32, 256)
        assert cfg.kv_cache_dims == (1, 256 + 32, 0)  # the latent and the RoPE key; values inside
    assert (v2.q_lora_rank, v2.gating, v2.norm_topk, v2.n_expert_groups) == (0, "softmax", False, 0)
    assert (v3.q_lora_rank, v3.gating, v3.norm_topk, v3.expert_weights_scale) == (256, "sigmoid", True, 2.5)
    assert (v3.n_expert_groups, v3.n_group_used) == (4, 2)
    # YaRN x4 with mscale_all_dim 1: the tables' magnitude stays 1, the scores scale by mscale^2
    assert v3.rope_scaling.freq_scale == 0.25 and v3.rope_scaling.magnitude == pytest.approx(1.0)
    assert kq_scale(v3) == pytest.approx((1 + 0.1 * math.log(4)) ** 2 / math.sqrt(96))
    assert kq_scale(v2) == pytest.approx(1 / math.sqrt(96))


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_greedy_tokens_and_logits_match_llama_cpp(version: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue(f"{version}_engine")
    assert_matches_llama_cpp(engine, request.getfixturevalue(f"{version}_reference"))
    assert engine.trace.n_layers == 3  # routing is traced for the MoE layers only


@pytest.mark.parametrize("wrong", ["NeoX RoPE", "no YaRN", "no mscale in the scores", "softmax gate",
                                   "no selection bias", "no expert groups", "unscaled weights", "no shared expert"])
def test_logits_catch_a_wrong_part(v3_engine: Engine, v3_reference, wrong: str) -> None:
    cfg = v3_engine.ops.cfg
    config = {"NeoX RoPE": dict(rope_neox=True), "no YaRN": dict(rope_scaling=RopeScaling()),
              "no mscale in the scores": dict(rope_scaling=dataclasses.replace(cfg.rope_scaling, yarn_log_mul=0.0)),
              "softmax gate": dict(gating="softmax"), "no expert groups": dict(n_expert_groups=0),
              "unscaled weights": dict(expert_weights_scale=0.0)}
    dropped = {"no selection bias": ("exp_probs_b",), "no shared expert": ("gate_shexp",)}
    err = wrong_part_error(v3_engine, v3_reference, config.get(wrong), dropped.get(wrong, ()))
    assert err > 2e-3, f"{wrong}: logits off by only {err:.2e}"


def test_older_files_single_kv_b_gives_the_same_logits(v2_engine: Engine, v2_reference) -> None:
    """attn_kv_b (per head: the no-RoPE keys' rows, then the values') in place of the split pair."""
    engine, cfg = v2_engine, v2_engine.cfg
    saved = [dataclasses.replace(lw) for lw in engine.weights.layers]
    for lw in engine.weights.layers:
        wk_b, wv_b = lw.wk_b.dequantize(), lw.wv_b.dequantize()  # (heads, lora, nope), (heads, v, lora)
        kv_b = torch.cat([wk_b.transpose(1, 2), wv_b], dim=1).reshape(-1, cfg.kv_lora_rank).contiguous()
        lw.wkv_b = QTensor(kv_b.view(torch.uint8), "F32", cfg.kv_lora_rank)
        lw.wk_b = lw.wv_b = None
    try:
        err = worst_logit_error(runtime_logits(engine, v2_reference[0]), v2_reference[1])
    finally:
        engine.weights.layers[:] = saved
    assert err < 1e-3


def test_group_limited_routing_keeps_the_best_groups_by_their_two_best_experts() -> None:
    # groups of 3: sums of the two best are 1.0, 1.3, 1.2, 0.9 -> the best two are groups 1 and 2
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.5, 0.4, 0.8, 0.6, 0.6, 0.1, 0.45, 0.45, 0.3]])
    kept = best_groups_only(scores, 4, 2)
    assert torch.isinf(kept).tolist() == [[True] * 3 + [False] * 6 + [True] * 3]
    assert torch.equal(kept[0, 3:9], scores[0, 3:9])


def test_the_kv_cache_keeps_the_latent_and_the_budget_counts_it(deepseek2_model: Path, v2_engine: Engine) -> None:
    sizes = model_sizes(deepseek2_model)
    assert (sizes.n_layers, sizes.n_dense_layers, sizes.kv_token_elems) == (3, 1, 288)
    cache = v2_engine.kv_cache
    held = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert held == kv_bytes(sizes, MAX_CTX, cache.k.element_size())
    tensors = inspect_model(deepseek2_model).tensors
    routed = sum(t.nbytes for t in tensors if t.name.endswith("_exps.weight"))
    assert sizes.expert_bytes * 3 * sizes.n_expert == routed
    absorbed = [t for t in tensors if t.name.endswith(MLA_ABSORBED)]
    assert absorbed
    copies = sum(math.prod(t.shape) for t in absorbed)  # held dequantized too, float16 on the GPU
    assert sizes.resident_bytes == sum(t.nbytes for t in tensors if not t.name.endswith("_exps.weight")) + 2 * copies
    v2_engine.start([1, 2, 3])
    v2_engine.decode()
    assert sum(w.numel() for pair in v2_engine.ops.absorbed.values() for w in pair) == copies


def test_inspect_and_the_cache_backend_accept_it(deepseek3_model: Path) -> None:
    profile = inspect_model(deepseek3_model)
    assert (profile.architecture, profile.n_layers) == ("deepseek2", 4)
    assert profile.layers[0].dense_ffn > 0 and profile.layers[0].experts == 0
    assert profile.layers[1].shared_experts > 0 and profile.layers[1].experts > 0
    assert CacheBackend().supports(profile) is None

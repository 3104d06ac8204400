"""The gpt-oss family on the CPU: the runtime against llama.cpp itself on the gpt-oss-tiny
preset (q/k/v and output biases, attention sinks, an 8-token sliding window on layers 0 and 2,
YaRN, a biased router weighted by a softmax over its top 4, experts with biases and the clamped
SwiGLU), and the tuner's readers on that file.

Each step's logits must match llama.cpp's to 1e-3 of their largest value on the F16 file.
Measured: 2.8e-4 with the right model; 0.099 without the sliding window, 0.036 with it on
every layer, 0.092 without the sinks, 0.15 without the output bias, 0.22 with the softmax
before the top k, 0.40 without the router bias, 0.70 without the expert biases, 0.24 with plain
SwiGLU, 0.089 without the clamp, 0.010 without YaRN (``test_logits_catch_a_wrong_part``).
The released layout (MXFP4 experts, Q8_0 elsewhere) is held to test_runtime_quants' bounds:
llama.cpp rounds the activations to 8 bits before those products.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.cache.backend import CacheBackend
from autotune.cache_runtime.budget import model_sizes
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.hparams import read_config
from autotune.cache_runtime.rope_scaling import RopeScaling
from autotune.errors import AutotuneError
from autotune.model_info import inspect_model
from autotune.synth import PRESETS
from tests.llama_cpp_reference import (PROMPT, STEPS, assert_matches_llama_cpp, family_fixtures, llama_cpp_greedy,
                                       runtime_logits, wrong_part_error)

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRESET = PRESETS["gpt-oss-tiny"]


reference, engine = family_fixtures("gpt_oss_model")


def test_the_file_reads_as_gpt_oss(gpt_oss_model: Path) -> None:
    cfg = read_config(gpt_oss_model)
    assert (cfg.arch, cfg.n_layers, cfg.n_moe_layers, cfg.gating, cfg.norm_topk) == ("gpt-oss", 4, 4, "softmax_weight", False)
    assert (cfg.n_swa, cfg.swa_layers, cfg.expert_act) == (8, (True, False, True, False), "swiglu_oai")
    assert [cfg.window(il) for il in range(4)] == [8, 0, 8, 0]
    assert (cfg.rope_scaling.ext_factor, cfg.rope_scaling.freq_scale, cfg.rope_scaling.orig_ctx) == (1.0, 0.25, 1024)


def test_greedy_tokens_and_logits_match_llama_cpp(engine: Engine, reference) -> None:
    assert len(PROMPT) + STEPS > 2 * PRESET.n_swa  # the window slides past whole windows
    assert_matches_llama_cpp(engine, reference)


WRONG_CONFIG = {"no sliding window": dict(n_swa=0), "window on every layer": dict(swa_layers=(True,) * 4),
                "softmax before the top k": dict(gating="softmax"), "plain SwiGLU": dict(expert_act="silu"),
                "no YaRN": dict(rope_scaling=RopeScaling())}
WRONG_WEIGHTS = {"no sinks": ("attn_sinks",), "no output bias": ("bo",), "no router bias": ("router_b",),
                 "no expert biases": ("gate_exps_b", "up_exps_b", "down_exps_b")}


@pytest.mark.parametrize("wrong", [*WRONG_CONFIG, *WRONG_WEIGHTS, "no clamp"])
def test_logits_catch_a_wrong_part(engine: Engine, reference, wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if wrong == "no clamp":
        monkeypatch.setattr("autotune.cache_runtime.torch_ops.OAI_LIMIT", float("inf"))
    err = wrong_part_error(engine, reference, WRONG_CONFIG.get(wrong), WRONG_WEIGHTS.get(wrong, ()))
    assert err > 2e-3, f"{wrong}: logits off by only {err:.2e}"


def test_the_released_layout_follows_llama_cpp(gpt_oss_mxfp4_model: Path) -> None:
    """MXFP4 experts: teacher-forced on llama.cpp's tokens, each step's logits within 5e-2 of the
    largest and the runtime's pick at most 1e-2 below llama.cpp's best (test_runtime_quants')."""
    assert {t.type for t in inspect_model(gpt_oss_mxfp4_model).tensors if t.name.endswith("_exps.weight")} == {"MXFP4"}
    want_tokens, want_logits = llama_cpp_greedy(gpt_oss_mxfp4_model)
    got = runtime_logits(Engine(gpt_oss_mxfp4_model, device="cpu", kernels="torch", max_ctx=64), want_tokens)
    for step, (g, w) in enumerate(zip(got, want_logits)):
        largest = float(w.abs().max())
        assert float((g - w).abs().max()) / largest < 5e-2, f"step {step}"
        assert float(w.max() - w[g.argmax()]) / largest < 1e-2, f"step {step}"


def test_cpu_misses_are_refused_for_an_activation_ggml_lacks(gpt_oss_model: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the experts' activation one ggml's CPU graph lacks, a miss mode that hands misses to
    it would be refused in one line rather than computing other experts (gpt-oss's own clamped
    SwiGLU is computed: tests/test_cpu_misses.py)."""
    monkeypatch.setattr("autotune.cache_runtime.engine.CPU_ACTIVATIONS", ("silu",))
    engine = Engine(gpt_oss_model, device="cpu", kernels="torch", max_ctx=64)
    with pytest.raises(AutotuneError, match="no swiglu_oai activation here .* zero_copy or copy"):
        engine.configure_cache(CacheConfig(vram_cap=2**30, max_ctx=64, miss_mode="cpu"))


def test_the_budget_counts_the_biases_as_resident(gpt_oss_model: Path) -> None:
    sizes = model_sizes(gpt_oss_model)
    tensors = inspect_model(gpt_oss_model).tensors
    routed = sum(t.nbytes for t in tensors if t.name.endswith("_exps.weight"))
    assert sizes.expert_bytes * PRESET.n_layers * PRESET.n_expert == routed
    assert sizes.resident_bytes == sum(t.nbytes for t in tensors if not t.name.endswith("_exps.weight"))


def test_inspect_and_the_cache_backend_accept_it(gpt_oss_model: Path) -> None:
    profile = inspect_model(gpt_oss_model)
    assert (profile.architecture, profile.n_layers) == ("gpt-oss", 4)
    assert CacheBackend().supports(profile) is None

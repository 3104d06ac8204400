"""The GLM-4.5 family (``glm4moe``) on the CPU: the runtime against llama.cpp itself on the
glm4moe-tiny preset (a leading dense layer, q/k/v biases, RoPE over half of each head, a
sigmoid router with expert-bias correction, renormalized and scaled weights, a shared expert,
and a NextN layer the decoder skips), and the tuner's readers on that file.

Each step's logits must match llama.cpp's to 1e-3 of their largest value. Measured: 2.4e-4
with the right model; 0.038 with RoPE over whole heads, 0.071 with a softmax gate, 0.050
without the selection bias, 0.072 unscaled, 0.11 without the shared expert, 0.071 without the
attention biases (``test_logits_catch_a_wrong_part``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.cache.backend import CacheBackend
from autotune.cache_runtime.budget import model_sizes
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.hparams import read_config
from autotune.model_info import inspect_model
from autotune.synth import PRESETS
from tests.llama_cpp_reference import assert_matches_llama_cpp, family_fixtures, wrong_part_error

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRESET = PRESETS["glm4moe-tiny"]


reference, engine = family_fixtures("glm4moe_model")


def test_the_file_reads_as_glm4moe_without_its_nextn_layer(glm4moe_model: Path) -> None:
    cfg = read_config(glm4moe_model)
    assert (cfg.arch, cfg.n_layers, cfg.n_dense_lead, cfg.n_moe_layers) == ("glm4moe", 4, 1, 3)
    assert (cfg.gating, cfg.norm_topk, cfg.expert_weights_scale, cfg.rope_dims) == ("sigmoid", True, 2.5, 32)
    assert any(t.name.startswith("blk.4.nextn.") for t in inspect_model(glm4moe_model).tensors)


def test_greedy_tokens_and_logits_match_llama_cpp(engine: Engine, reference) -> None:
    assert_matches_llama_cpp(engine, reference)
    assert engine.trace.n_layers == 3  # routing is traced for the MoE layers only


@pytest.mark.parametrize("wrong", ["full RoPE", "softmax gate", "no selection bias", "unscaled weights",
                                   "no shared expert", "no attention biases"])
def test_logits_catch_a_wrong_part(engine: Engine, reference, wrong: str) -> None:
    config = {"full RoPE": dict(rope_dims=0), "softmax gate": dict(gating="softmax"),
              "unscaled weights": dict(expert_weights_scale=0.0)}
    dropped = {"no selection bias": ("exp_probs_b",), "no shared expert": ("gate_shexp",),
               "no attention biases": ("bq", "bk", "bv")}
    err = wrong_part_error(engine, reference, config.get(wrong), dropped.get(wrong, ()))
    assert err > 2e-3, f"{wrong}: logits off by only {err:.2e}"


def test_the_budget_counts_dense_and_shared_ffns_as_resident_and_skips_nextn(glm4moe_model: Path) -> None:
    sizes = model_sizes(glm4moe_model)
    tensors = [t for t in inspect_model(glm4moe_model).tensors if not t.name.startswith("blk.4.")]
    routed = sum(t.nbytes for t in tensors if t.name.endswith("_exps.weight"))
    assert (sizes.n_layers, sizes.n_dense_layers) == (3, 1)
    assert sizes.expert_bytes * 3 * PRESET.n_expert == routed
    assert sizes.n_ff_resident == PRESET.n_ff
    # everything else, the dense FFN and the shared experts included (norms and biases: F32 in the file)
    assert sizes.resident_bytes == sum(t.nbytes for t in tensors if not t.name.endswith("_exps.weight"))


def test_inspect_and_the_cache_backend_accept_it(glm4moe_model: Path) -> None:
    profile = inspect_model(glm4moe_model)
    assert (profile.architecture, profile.n_layers) == ("glm4moe", 4)
    assert profile.layers[0].dense_ffn > 0 and profile.layers[0].experts == 0
    assert profile.layers[1].shared_experts > 0 and profile.layers[1].experts > 0
    assert CacheBackend().supports(profile) is None

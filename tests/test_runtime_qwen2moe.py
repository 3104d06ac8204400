"""The Qwen2-MoE family (``qwen2moe``) on the CPU: the runtime against llama.cpp itself on the
qwen2moe-tiny preset (q/k/v biases, softmax top-4 without renormalization, a sigmoid-gated
shared expert), and the tuner's readers on that file.

Each step's logits must match llama.cpp's to 1e-3 of their largest value. Measured: 2.9e-4
with the right model; 0.027 with renormalized top-k, 0.066 without the shared expert's gate,
0.074 without the shared expert, 0.053 without the attention biases
(``test_logits_catch_a_wrong_part``).
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


reference, engine = family_fixtures("qwen2moe_model")


def test_the_file_reads_as_qwen2moe(qwen2moe_model: Path) -> None:
    cfg = read_config(qwen2moe_model)
    preset = PRESETS["qwen2moe-tiny"]
    assert (cfg.arch, cfg.n_expert, cfg.n_expert_used, cfg.n_ff_expert) == ("qwen2moe", 16, 4, preset.n_ff_expert)
    assert (cfg.rope_neox, cfg.qk_norm, cfg.norm_topk, cfg.gating, cfg.n_dense_lead) == (True, False, False, "softmax", 0)


def test_greedy_tokens_and_logits_match_llama_cpp(engine: Engine, reference) -> None:
    assert_matches_llama_cpp(engine, reference)


@pytest.mark.parametrize("wrong", ["renormalized top-k", "ungated shared expert", "no shared expert", "no attention biases"])
def test_logits_catch_a_wrong_part(engine: Engine, reference, wrong: str) -> None:
    dropped = {"ungated shared expert": ("gate_inp_shexp",), "no shared expert": ("gate_shexp",),
               "no attention biases": ("bq", "bk", "bv")}
    config = dict(norm_topk=True) if wrong == "renormalized top-k" else None
    err = wrong_part_error(engine, reference, config, dropped.get(wrong, ()))
    assert err > 2e-3, f"{wrong}: logits off by only {err:.2e}"


def test_the_shared_expert_is_resident_weight_not_a_cache_slot(qwen2moe_model: Path) -> None:
    sizes = model_sizes(qwen2moe_model)
    tensors = inspect_model(qwen2moe_model).tensors
    routed = sum(t.nbytes for t in tensors if t.name.endswith("_exps.weight"))
    shared = sum(t.nbytes for t in tensors if "_shexp" in t.name)
    preset = PRESETS["qwen2moe-tiny"]
    assert shared > 0 and sizes.expert_bytes * preset.n_layers * preset.n_expert == routed
    assert sizes.resident_bytes >= shared and sizes.n_ff_resident == preset.n_ff_shexp


def test_inspect_and_the_cache_backend_accept_it(qwen2moe_model: Path) -> None:
    profile = inspect_model(qwen2moe_model)
    assert (profile.architecture, profile.n_expert) == ("qwen2moe", 16)
    assert profile.layers[0].shared_experts > 0
    assert CacheBackend().supports(profile) is None

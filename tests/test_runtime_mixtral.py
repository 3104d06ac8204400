"""The Mixtral family (llama.cpp's ``llama`` architecture with experts) on the CPU: the runtime
against llama.cpp itself on the mixtral-tiny preset, and the tuner's readers on that file.

The synthetic residual stream is dominated by the token embedding, so greedy tokens alone would
not catch a wrong trait (NeoX RoPE or un-renormalized top-k leave these 16 tokens unchanged):
each step's logits must also match llama.cpp's to 1e-3 of their largest value. Measured: 2e-4
with the right traits, 0.024 with NeoX RoPE, 0.037 without renormalization.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.cache.backend import CacheBackend
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.hparams import read_config
from autotune.model_info import inspect_model
from autotune.synth import PRESETS
from tests.llama_cpp_reference import assert_matches_llama_cpp, llama_cpp_greedy

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama_cpp_reference(mixtral_model: Path):
    return llama_cpp_greedy(mixtral_model)


def test_the_file_reads_as_mixtral(mixtral_model: Path) -> None:
    cfg = read_config(mixtral_model)
    preset = PRESETS["mixtral-tiny"]
    assert (cfg.arch, cfg.n_expert, cfg.n_expert_used, cfg.n_ff_expert) == ("llama", 8, 2, preset.n_ff_expert)
    assert (cfg.rope_neox, cfg.qk_norm, cfg.norm_topk) == (False, False, True)
    assert not any(t.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight"))
                   for t in inspect_model(mixtral_model).tensors)


def test_greedy_tokens_and_logits_match_llama_cpp(mixtral_model: Path, llama_cpp_reference) -> None:
    engine = Engine(mixtral_model, device="cpu", kernels="torch", max_ctx=64)
    assert_matches_llama_cpp(engine, llama_cpp_reference)


def test_inspect_and_the_cache_backend_accept_it(mixtral_model: Path) -> None:
    profile = inspect_model(mixtral_model)
    preset = PRESETS["mixtral-tiny"]
    assert (profile.architecture, profile.n_expert, profile.n_ff_expert) == ("llama", 8, preset.n_ff_expert)
    assert profile.expert_bytes * preset.n_expert == profile.layers[0].experts
    assert CacheBackend().supports(profile) is None

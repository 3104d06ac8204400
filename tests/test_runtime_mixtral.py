"""The Mixtral family (llama.cpp's ``llama`` architecture with experts) on the CPU: the runtime
against llama.cpp itself on the mixtral-tiny preset, and the tuner's readers on that file.

The synthetic residual stream is dominated by the token embedding, so greedy tokens alone would
not catch a wrong trait (NeoX RoPE or un-renormalized top-k leave these 16 tokens unchanged):
each step's logits must also match llama.cpp's to 1e-3 of their largest value. Measured: 2e-4
with the right traits, 0.024 with NeoX RoPE, 0.037 without renormalization.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.backends.cache.backend import CacheBackend
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.hparams import read_config
from autotune.model_info import inspect_model
from autotune.synth import PRESETS

pytest.importorskip("llama_cpp")

PROMPT = [5, 17, 300, 42, 7, 999, 256, 3]
STEPS = 16

# llama.cpp in a child process (llama_cpp stays out of the test process): greedy tokens, then the
# logits it decoded each from (the last token is never evaluated).
_LLAMA_CPP_GREEDY = """
import json, sys, itertools, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, logits_all=True, verbose=False)
prompt, steps = json.loads(sys.argv[2]), int(sys.argv[3])
tokens = list(itertools.islice(llm.generate(prompt, top_k=1, temp=0.0), steps))
logits = llm.scores[len(prompt) - 1 : len(prompt) - 1 + steps].tolist()
print(json.dumps({"tokens": tokens, "logits": logits}))
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama_cpp_greedy(mixtral_model: Path) -> tuple[list[int], torch.Tensor]:
    done = subprocess.run([sys.executable, "-c", _LLAMA_CPP_GREEDY, str(mixtral_model), json.dumps(PROMPT), str(STEPS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    return out["tokens"], torch.tensor(out["logits"], dtype=torch.float64)


def test_the_file_reads_as_mixtral(mixtral_model: Path) -> None:
    cfg = read_config(mixtral_model)
    preset = PRESETS["mixtral-tiny"]
    assert (cfg.arch, cfg.n_expert, cfg.n_expert_used, cfg.n_ff_expert) == ("llama", 8, 2, preset.n_ff_expert)
    assert (cfg.rope_neox, cfg.qk_norm, cfg.norm_topk) == (False, False, True)
    assert not any(t.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight"))
                   for t in inspect_model(mixtral_model).tensors)


def test_greedy_tokens_and_logits_match_llama_cpp(mixtral_model: Path, llama_cpp_greedy) -> None:
    want_tokens, want_logits = llama_cpp_greedy
    assert len(want_tokens) == STEPS
    engine = Engine(mixtral_model, device="cpu", kernels="torch", max_ctx=64)
    logits = [engine.prefill(PROMPT)]
    for token in want_tokens[:-1]:
        logits.append(engine.decode(token))
    got = torch.stack(logits).double()
    assert got.argmax(-1).tolist() == want_tokens
    for step in range(STEPS):
        err = float((got[step] - want_logits[step]).abs().max() / want_logits[step].abs().max())
        assert err < 1e-3, f"step {step}: logits off by {err:.2e} of their largest"
    engine.reset()
    assert engine.generate(PROMPT, STEPS) == want_tokens


def test_inspect_and_the_cache_backend_accept_it(mixtral_model: Path) -> None:
    profile = inspect_model(mixtral_model)
    preset = PRESETS["mixtral-tiny"]
    assert (profile.architecture, profile.n_expert, profile.n_ff_expert) == ("llama", 8, preset.n_ff_expert)
    assert profile.expert_bytes * preset.n_expert == profile.layers[0].experts
    assert CacheBackend().supports(profile) is None

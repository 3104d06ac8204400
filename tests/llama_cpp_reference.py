"""llama.cpp's own greedy decode of a GGUF, for the runtime's family tests to match on the CPU.

llama.cpp runs in a child process (llama_cpp stays out of the test process). The synthetic
residual stream is dominated by the token embedding, so greedy tokens alone would not catch a
wrong trait: each step's logits are compared too (``worst_logit_error``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.rope import RopeTable

PROMPT = [5, 17, 300, 42, 7, 999, 256, 3]
STEPS = 16

# greedy tokens, then the logits it decoded each from (the last token is never evaluated)
_LLAMA_CPP_GREEDY = """
import json, sys, itertools, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, logits_all=True, verbose=False)
prompt, steps = json.loads(sys.argv[2]), int(sys.argv[3])
tokens = list(itertools.islice(llm.generate(prompt, top_k=1, temp=0.0), steps))
logits = llm.scores[len(prompt) - 1 : len(prompt) - 1 + steps].tolist()
print(json.dumps({"tokens": tokens, "logits": logits}))
"""


def llama_cpp_greedy(path: Path) -> tuple[list[int], torch.Tensor]:
    """llama.cpp's STEPS greedy tokens after PROMPT, and the logits (STEPS, vocab) it chose them from."""
    done = subprocess.run([sys.executable, "-c", _LLAMA_CPP_GREEDY, str(path), json.dumps(PROMPT), str(STEPS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    return out["tokens"], torch.tensor(out["logits"], dtype=torch.float64)


def runtime_logits(engine: Engine, tokens: list[int]) -> torch.Tensor:
    """The engine's logits (STEPS, vocab) after PROMPT, then after each of ``tokens`` but the last."""
    engine.reset()
    logits = [engine.prefill(PROMPT)]
    for token in tokens[:-1]:
        logits.append(engine.decode(token).clone())
    return torch.stack(logits).double()


def worst_logit_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest step's max |got - want|, relative to that step's largest |want|."""
    return max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want))


def assert_matches_llama_cpp(engine: Engine, reference: tuple[list[int], torch.Tensor], tolerance: float = 1e-3) -> None:
    """At llama.cpp's greedy tokens (``reference``: ``llama_cpp_greedy``'s), every step's logits
    are within ``tolerance`` of llama.cpp's (``worst_logit_error``) with its token on top, and
    the engine's own greedy decode gives those tokens."""
    want_tokens, want_logits = reference
    assert len(want_tokens) == STEPS
    got = runtime_logits(engine, want_tokens)
    assert got.argmax(-1).tolist() == want_tokens
    assert worst_logit_error(got, want_logits) < tolerance
    engine.reset()
    assert engine.generate(PROMPT, STEPS) == want_tokens


def family_fixtures(model_fixture: str):
    """A family test module's module-scoped fixtures over its model fixture (conftest's):
    ``reference``, llama.cpp's greedy decode, and ``engine``, the runtime's torch path on the
    CPU. Use: ``reference, engine = family_fixtures("glm4moe_model")``."""

    @pytest.fixture(scope="module")
    def reference(request: pytest.FixtureRequest) -> tuple[list[int], torch.Tensor]:
        return llama_cpp_greedy(request.getfixturevalue(model_fixture))

    @pytest.fixture(scope="module")
    def engine(request: pytest.FixtureRequest) -> Engine:
        return Engine(request.getfixturevalue(model_fixture), device="cpu", kernels="torch", max_ctx=64)

    return reference, engine


def wrong_part_error(engine: Engine, reference: tuple[list[int], torch.Tensor], config: dict | None = None,
                     dropped: tuple[str, ...] = ()) -> float:
    """``worst_logit_error`` against llama.cpp with one part of the family made wrong: the
    config's fields in ``config`` changed (the RoPE table rebuilt from it), every layer's
    weights named in ``dropped`` removed. The engine is restored afterwards."""
    saved_cfg, saved_rope = engine.ops.cfg, engine.ops.rope
    saved_layers = [dataclasses.replace(lw) for lw in engine.weights.layers]
    engine.ops.cfg = dataclasses.replace(saved_cfg, **(config or {}))
    engine.ops.rope = RopeTable(engine.ops.cfg, engine.kv_cache.max_ctx, engine.device)
    for lw in engine.weights.layers:
        for name in dropped:
            setattr(lw, name, None)
    try:
        return worst_logit_error(runtime_logits(engine, reference[0]), reference[1])
    finally:
        engine.ops.cfg, engine.ops.rope = saved_cfg, saved_rope
        engine.weights.layers[:] = saved_layers

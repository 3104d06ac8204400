"""The runtime's CPU path against the plain dequantize-then-matmul reference, on the tiny preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.reference import reference_logits

PROMPT = [5, 17, 300, 42, 7, 999, 256, 3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return reference_logits(tiny_model, PROMPT)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def test_prefill_then_decode_matches_reference(tiny_model: Path, reference) -> None:
    ref_logits, ref_ids = reference
    engine = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64)
    engine.trace.enabled = True
    logits = [engine.prefill(PROMPT[:5])]
    for token in PROMPT[5:]:
        logits.append(engine.decode(token))
    assert _rel_err(logits[0], ref_logits[4]) < 1e-5
    for i, got in enumerate(logits[1:]):
        assert _rel_err(got, ref_logits[5 + i]) < 1e-5
    np.testing.assert_array_equal(np.sort(engine.trace.ids(), -1), np.sort(ref_ids.numpy(), -1))


def test_chunked_prefill_equals_one_chunk(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64)
    whole = engine.prefill(PROMPT).clone()
    engine.reset()
    engine.prefill_chunk = 3
    assert torch.allclose(engine.prefill(PROMPT), whole, rtol=1e-5, atol=1e-5)


def test_generate_greedy_follows_argmax(tiny_model: Path, reference) -> None:
    engine = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64)
    out = engine.generate(PROMPT, 4)
    seq = PROMPT + out
    ref_logits, _ = reference_logits(tiny_model, seq[:-1])
    assert out == ref_logits[len(PROMPT) - 1 :].argmax(-1).tolist()


def test_trace_counts_and_sampling(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64)
    engine.trace.enabled = True
    torch.manual_seed(0)
    out = engine.generate(PROMPT, 3, temperature=0.8)
    assert len(out) == 3 and all(0 <= t < engine.cfg.n_vocab for t in out)
    cfg = engine.cfg
    ids = engine.trace.ids()
    assert ids.shape == (len(PROMPT) + 2, cfg.n_layers, cfg.n_expert_used)
    counts = engine.trace.counts()
    assert counts.shape == (cfg.n_layers, cfg.n_expert)
    assert (counts.sum(1) == ids.shape[0] * cfg.n_expert_used).all()

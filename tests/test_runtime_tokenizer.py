"""The runtime's tokenizer: the GGUF's own vocabulary through llama.cpp, vocabulary only."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from autotune.cache_runtime.tokenizer import Tokenizer  # noqa: E402


def test_round_trip_and_special_tokens(tiny_model: Path) -> None:
    tok = Tokenizer(tiny_model)
    text = "The history of the people"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges apply
    assert len(tok.encode("<|im_start|>", special=True)) == 1  # a control token
    assert len(tok.encode("<|im_start|>", special=False)) > 1  # plain text
    assert 0 <= tok.eos_id < tok.n_vocab


def test_engine_completes_text(tiny_model: Path) -> None:
    import torch

    from autotune.cache_runtime import Engine

    torch.set_num_threads(1)
    engine = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64)
    text = engine.complete("The history of", 4)
    assert isinstance(text, str)
    assert engine.n_past == len(engine.tokenizer.encode("The history of")) + 3

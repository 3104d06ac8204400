"""Shared fixtures: synthetic models are written once per test session. Tests marked ``gpu``
skip where there is no CUDA GPU."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.synth import write_synthetic_model


@functools.cache
def _without_cuda() -> str | None:
    """Why tests marked ``gpu`` cannot run here; None where they can."""
    from autotune.hardware import probe_hardware

    if not probe_hardware().has_gpu:
        return "needs an NVIDIA GPU"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            return "needs PyTorch built with CUDA"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and (reason := _without_cuda()):
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def trial_store_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Cache trials keep the routing counts they learn here, not in the user's cache dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOTUNE_TRIAL_STORE", str(tmp_path_factory.mktemp("trial-store")))
        yield


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices: one torch thread avoids OpenMP spin-waits on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user data dir (the runtime's learned routing counts) of this test's own."""
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny qwen3moe GGUF (4 layers, 16 experts, top-4; about 9 MB)."""
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_synthetic_model(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def mixtral_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Mixtral-style GGUF (llama with 8 experts, top-2; F16 so that llama.cpp's
    CPU matmuls stay within 1e-3 of the runtime's float32; about 28 MB)."""
    path = tmp_path_factory.mktemp("models") / "mixtral-tiny.gguf"
    write_synthetic_model(path, preset="mixtral-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def qwen2moe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Qwen2-MoE-style GGUF (16 experts, top-4, a shared expert; F16 as mixtral_model)."""
    path = tmp_path_factory.mktemp("models") / "qwen2moe-tiny.gguf"
    write_synthetic_model(path, preset="qwen2moe-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def glm4moe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny GLM-4.5-style GGUF (a dense first layer, sigmoid top-4 of 16, a shared
    expert, a NextN layer; F16 as mixtral_model)."""
    path = tmp_path_factory.mktemp("models") / "glm4moe-tiny.gguf"
    write_synthetic_model(path, preset="glm4moe-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def deepseek2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny DeepSeek-V2-Lite-style GGUF (latent attention with q directly, a dense
    first layer, softmax top-4 of 16, shared experts; F16 as mixtral_model)."""
    path = tmp_path_factory.mktemp("models") / "deepseek2-tiny.gguf"
    write_synthetic_model(path, preset="deepseek2-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def deepseek3_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny DeepSeek-V3-style GGUF (low-rank q, YaRN, sigmoid top-4 of 16 with
    selection bias within the best 2 of 4 expert groups; F16 as mixtral_model)."""
    path = tmp_path_factory.mktemp("models") / "deepseek3-tiny.gguf"
    write_synthetic_model(path, preset="deepseek3-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def gpt_oss_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny gpt-oss-style GGUF (sinks, an 8-token window on layers 0 and 2,
    YaRN, biased router and experts, the clamped SwiGLU; F16 as mixtral_model)."""
    path = tmp_path_factory.mktemp("models") / "gpt-oss-tiny.gguf"
    write_synthetic_model(path, preset="gpt-oss-tiny", quant="f16", seed=0)
    return path


@pytest.fixture(scope="session")
def gpt_oss_mxfp4_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpt-oss-tiny in the released layout: MXFP4 experts, Q8_0 elsewhere."""
    path = tmp_path_factory.mktemp("models") / "gpt-oss-tiny-mxfp4.gguf"
    write_synthetic_model(path, preset="gpt-oss-tiny", quant="mxfp4_moe", seed=0)
    return path


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dense (no experts) llama GGUF written with the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path_factory.mktemp("models") / "dense.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_context_length(256)
    for name, shape in [
        ("token_embd.weight", (32, 64)),
        ("blk.0.attn_q.weight", (64, 64)),
        ("blk.0.ffn_up.weight", (128, 64)),
        ("output.weight", (32, 64)),
    ]:
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

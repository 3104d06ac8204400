"""The runtime's choices made once: the model family by the GGUF's architecture, the device's
and the kernels' implementations by the engine's arguments, and the ops contract they meet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autotune.cache_runtime.families import FAMILIES, Family, PlannedFamily, family_for
from autotune.cache_runtime.hparams import read_config
from autotune.cache_runtime.platforms import TorchKernels, TritonKernels, select_platform
from autotune.errors import ModelFileError


def test_each_family_module_registers_under_its_architecture(tiny_model: Path, mixtral_model: Path) -> None:
    assert read_config(tiny_model).arch == "qwen3moe"
    assert read_config(mixtral_model).arch == "llama"
    assert isinstance(family_for("qwen3moe", tiny_model), Family)
    assert family_for("llama", mixtral_model).forward is family_for("qwen3moe", tiny_model).forward
    assert all(arch == family.arch for arch, family in FAMILIES.items())
    assert {arch for arch, f in FAMILIES.items() if isinstance(f, PlannedFamily)} == {"olmoe"}


def _header_only(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_known_family_that_cannot_run_yet_says_what_it_lacks(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="olmoe needs q/k norm over the whole projection, not implemented yet"):
        read_config(_header_only(tmp_path / "olmoe.gguf", "olmoe"))


def test_a_dense_model_of_a_runnable_family_is_named_dense(dense_model: Path) -> None:
    with pytest.raises(ModelFileError, match="a dense llama model .no llama.expert_count."):
        read_config(dense_model)


def test_an_unknown_architecture_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="the runtime does not know architecture 'gptx'"):
        read_config(_header_only(tmp_path / "other.gguf", "gptx"))


def test_the_device_picks_its_default_kernels_and_any_may_be_named() -> None:
    cpu = select_platform("cpu")
    assert isinstance(cpu.kernels, TorchKernels) and cpu.device.is_host and not cpu.captures_graphs
    assert cpu.device.torch_device == torch.device("cpu")
    interpreted = select_platform("cpu", "triton")
    assert isinstance(interpreted.kernels, TritonKernels) and not interpreted.captures_graphs
    assert interpreted.kernels.kv_dtype == torch.float16 and cpu.kernels.kv_dtype == torch.float32


def test_unknown_kernels_and_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="kernels must be 'triton' or 'torch', not 'cuda'"):
        select_platform("cpu", "cuda")
    with pytest.raises(ValueError, match="runs on cpu or cuda devices, not 'meta'"):
        select_platform("meta")


def test_every_implementation_meets_the_whole_contract() -> None:
    """No abstract member left: each ops class, the expert cache and the prefetch steps can be built."""
    pytest.importorskip("triton")
    from autotune.cache_runtime.expert_cache import ExpertCache

    classes = [select_platform("cpu", name).kernels.ops_class() for name in ("torch", "triton")]
    classes += [select_platform("cpu", name).kernels.ring_steps() for name in ("torch", "triton")]
    assert [sorted(c.__abstractmethods__) for c in [*classes, ExpertCache]] == [[]] * 5

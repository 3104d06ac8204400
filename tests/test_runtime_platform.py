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


def test_each_family_module_registers_under_its_architecture(tiny_model: Path) -> None:
    assert read_config(tiny_model).arch == "qwen3moe"
    assert isinstance(family_for("qwen3moe", tiny_model), Family)
    assert all(arch == family.arch for arch, family in FAMILIES.items())
    assert {arch for arch, f in FAMILIES.items() if isinstance(f, PlannedFamily)} == {"qwen2moe", "olmoe", "llama"}


def test_a_known_family_that_cannot_run_yet_says_what_it_lacks(dense_model: Path) -> None:
    with pytest.raises(ModelFileError, match="llama needs mixtral-style llama files .untested., not implemented yet"):
        read_config(dense_model)


def test_an_unknown_architecture_is_named(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "other.gguf"
    writer = GGUFWriter(path, "gptx")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="the runtime does not know architecture 'gptx'"):
        read_config(path)


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

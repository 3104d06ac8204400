"""`--backends auto`: llama.cpp everywhere, the expert cache where there is an NVIDIA GPU."""

from __future__ import annotations

from dataclasses import replace

from autotune.hardware import GpuInfo, HardwareProfile
from autotune.search.actions import default_backends

CPU_ONLY = HardwareProfile(cpu_model="test CPU", physical_cores=16, logical_cores=32, ram_bytes=128 * 2**30)
H200 = GpuInfo(index=0, name="NVIDIA H200", total_bytes=141 * 2**30, free_bytes=140 * 2**30, pcie_generation=5,
               pcie_width=16, compute_capability="9.0", uuid="GPU-test")


def test_auto_tunes_the_expert_cache_only_beside_a_gpu() -> None:
    assert default_backends(CPU_ONLY) == ["llama_cpp"]
    assert default_backends(replace(CPU_ONLY, gpus=[H200])) == ["llama_cpp", "cache"]

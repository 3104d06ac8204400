"""What machine this is: GPUs through pynvml, CPU and RAM through psutil.

A machine with no GPU, or no NVIDIA driver, is a normal case: ``gpus`` is empty.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    pcie_generation: int | None
    pcie_width: int | None
    compute_capability: str
    uuid: str


@dataclass
class HardwareProfile:
    cpu_model: str
    physical_cores: int
    logical_cores: int
    ram_bytes: int
    driver: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_error: str | None = None  # why no GPU was found, when none was

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def fingerprint(self) -> str:
        """Identity of the parts that decide speed (not free memory, not the GPU's UUID)."""
        stable = {
            "cpu": self.cpu_model,
            "cores": self.physical_cores,
            "ram_gib": round(self.ram_bytes / 2**30),
            "gpus": [(g.name, round(g.total_bytes / 2**30), g.pcie_generation, g.pcie_width) for g in self.gpus],
        }
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint
        return data


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _probe_gpus() -> tuple[str | None, list[GpuInfo], str | None]:
    """(driver version, GPUs, error) — the error says why there are none."""
    try:
        import pynvml
    except ImportError:
        return None, [], "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, [], f"no NVIDIA driver ({exc})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            try:
                generation = pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle)
                width = pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle)
            except pynvml.NVMLError:
                generation = width = None
            gpus.append(
                GpuInfo(
                    index=index,
                    name=pynvml.nvmlDeviceGetName(handle),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                    pcie_generation=generation,
                    pcie_width=width,
                    compute_capability=f"{major}.{minor}",
                    uuid=pynvml.nvmlDeviceGetUUID(handle),
                )
            )
        return driver, gpus, None if gpus else "the NVIDIA driver reports no GPU"
    finally:
        pynvml.nvmlShutdown()


def probe_hardware() -> HardwareProfile:
    driver, gpus, error = _probe_gpus()
    return HardwareProfile(
        cpu_model=_cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        logical_cores=psutil.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total,
        driver=driver,
        gpus=gpus,
        gpu_error=error,
    )

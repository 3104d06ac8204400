"""Which device and which kernels run the model, chosen once.

``select_platform`` turns the engine's ``device`` and ``kernels`` arguments into a
``Platform``: the device's ways (``devices.HostDevice`` or ``devices.CudaDevice``) and the
kernels' implementations (``TorchKernels`` or ``TritonKernels``: the ops, the KV cache's
element type, the prefetch ring's steps). Nothing else in the runtime asks which device or
which kernels it runs on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from autotune.cache_runtime.devices import CudaDevice, Device, HostDevice

if TYPE_CHECKING:
    from autotune.cache_runtime.ops import Ops
    from autotune.cache_runtime.prefetch import RingSteps


class Kernels(ABC):
    """One kind of kernels (its modules are imported when first asked for)."""

    kv_dtype: ClassVar[torch.dtype]  # the KV cache's element type
    captures_graphs: ClassVar[bool]  # a decode step on them can be captured as one CUDA graph

    @abstractmethod
    def ops_class(self) -> type[Ops]:
        """The forward-pass blocks."""

    @abstractmethod
    def ring_steps(self) -> type[RingSteps]:
        """The prefetch ring's steps."""


class TorchKernels(Kernels):
    """Plain PyTorch: the readable definition, and the CPU path."""

    kv_dtype = torch.float32
    captures_graphs = False

    def ops_class(self) -> type[Ops]:
        from autotune.cache_runtime.torch_ops import TorchOps

        return TorchOps

    def ring_steps(self) -> type[RingSteps]:
        from autotune.cache_runtime.prefetch import TorchRingSteps

        return TorchRingSteps


class TritonKernels(Kernels):
    """Fused Triton kernels (the GPU path; on the CPU under TRITON_INTERPRET=1)."""

    kv_dtype = torch.float16  # keys and values in float16, as llama.cpp keeps them by default
    captures_graphs = True

    def ops_class(self) -> type[Ops]:
        from autotune.cache_runtime.triton_ops import TritonOps

        return TritonOps

    def ring_steps(self) -> type[RingSteps]:
        from autotune.cache_runtime.triton_prefetch import TritonRingSteps

        return TritonRingSteps


DEVICES: dict[str, tuple[type[Device], type[Kernels]]] = {  # device type -> its class, its default kernels
    "cpu": (HostDevice, TorchKernels),
    "cuda": (CudaDevice, TritonKernels),
}
KERNELS: dict[str, type[Kernels]] = {"torch": TorchKernels, "triton": TritonKernels}


@dataclass(frozen=True)
class Platform:
    device: Device
    kernels: Kernels

    @property
    def captures_graphs(self) -> bool:
        """Whether a decode step can be captured as a CUDA graph here."""
        return self.device.captures_graphs and self.kernels.captures_graphs


def select_platform(device: str | None = None, kernels: str | None = None) -> Platform:
    """``device``: a torch device ("cuda" where there is a GPU, else "cpu"); ``kernels``:
    "triton" or "torch" (the device's default: Triton on a GPU)."""
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if torch_device.type not in DEVICES:
        raise ValueError(f"the runtime runs on {' or '.join(DEVICES)} devices, not {torch_device.type!r}")
    device_class, default_kernels = DEVICES[torch_device.type]
    if kernels is not None and kernels not in KERNELS:
        raise ValueError(f"kernels must be 'triton' or 'torch', not {kernels!r}")
    return Platform(device_class(torch_device), KERNELS[kernels]() if kernels else default_kernels())

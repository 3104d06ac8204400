"""Which GPU a trial's (or a served command's) processes run on, handed to them explicitly.

Whoever picks the GPU (``autotune run --gpus`` pins its race and served finalists to the first
one) passes a ``TrialGpu`` down: the isolation layer adds ``env()`` to the environment of the
child it starts, and the VRAM sampler samples ``nvml_entry()``. This process's own environment
is never changed, so nothing else in it sees another GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class TrialGpu:
    """The GPUs the child processes see, and which of them is sampled."""

    visible: str | None = None
    """The children's CUDA_VISIBLE_DEVICES: GPU indices (in PCI bus order, as NVML counts them)
    or UUIDs, comma-separated. None: they inherit this process's environment as it is."""
    index: int = 0
    """The sampled GPU, counted among those the children see."""

    def env(self) -> dict[str, str]:
        """What a child's environment adds to this process's."""
        if self.visible is None:
            return {}
        return {VISIBLE_ENV: self.visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def nvml_entry(self) -> str | None:
        """The sampled GPU as the children's CUDA_VISIBLE_DEVICES lists it (an NVML index or a
        UUID); None where the list does not reach it (no list: ``index`` is NVML's own)."""
        visible = self.visible if self.visible is not None else os.environ.get(VISIBLE_ENV, "")
        listed = [entry.strip() for entry in visible.split(",") if entry.strip()]
        return listed[self.index] if self.index < len(listed) else None

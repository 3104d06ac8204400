"""Peak VRAM of a trial's processes, sampled with pynvml on a background thread.

A trial runs as its own process group (the Python child and, for llama-bench, its
grandchild). Each sample is the sum of the per-process figures the driver lists for that
group (``nvmlDeviceGetComputeRunningProcesses``: the CUDA context included); where the
driver lists none of them (no per-process accounting, another PID namespace), the sample
is the device's used memory less what it used when the sampler started. Without pynvml,
a driver or the GPU, every figure is None. ``gpu`` names the sampled GPU as the sampled
processes see it (``TrialGpu``: under a CUDA_VISIBLE_DEVICES list, the device NVML calls by
that entry). When NVML stops answering for the device mid-trial (the GPU fell off the bus, the
driver went away), sampling stops and ``lost`` says why.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from autotune.isolation.gpu import TrialGpu


class VramSampler:
    """Samples one GPU for one process group, from ``watch`` to the end of the ``with`` block."""

    def __init__(self, gpu: TrialGpu = TrialGpu(), interval_s: float = 0.05):
        self.gpu = gpu
        self.interval_s = interval_s
        self._nvml: Any = None
        self._handle: Any = None
        self._baseline = 0
        self._pgid: int | None = None
        self._peak: int | None = None  # since the last mark
        self._overall: int | None = None
        self._last: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def __enter__(self) -> "VramSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no package, no driver: a CPU-only machine
            return self
        try:
            self._handle = _device_handle(pynvml, self.gpu)
            self._baseline = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self._nvml = pynvml
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
        return self

    def watch(self, pgid: int) -> None:
        """Start sampling the processes of group ``pgid`` (the child's pid when it leads a session)."""
        if self._nvml is None:
            return
        self._pgid = pgid
        self._thread = threading.Thread(target=self._run, name="vram-sampler", daemon=True)
        self._thread.start()

    def mark(self) -> int | None:
        """Peak since the previous mark (or since ``watch``); the next period starts now."""
        if self._nvml is None:
            return None
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, self._last
        return peak

    @property
    def peak(self) -> int | None:
        """Peak over the whole watch."""
        with self._lock:
            return self._overall

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # a lost GPU can fail this too; nothing is left to release
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        if self.lost:
            return
        try:
            used = self._group_used()
            if used is None:
                used = max(0, int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used) - self._baseline)
        except self._nvml.NVMLError as exc:
            self.lost = f"the GPU stopped answering NVML ({exc or type(exc).__name__})"
            return
        with self._lock:
            self._last = used
            self._peak = used if self._peak is None else max(self._peak, used)
            self._overall = used if self._overall is None else max(self._overall, used)

    def _group_used(self) -> int | None:
        """Sum of the group's per-process figures, or None when the driver lists none of them."""
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return None
        total, found = 0, False
        for process in processes:
            try:
                in_group = os.getpgid(process.pid) == self._pgid
            except OSError:  # gone, or not visible from here
                continue
            if in_group and process.usedGpuMemory is not None:
                total += int(process.usedGpuMemory)
                found = True
        return total if found else None


def _device_handle(pynvml: Any, gpu: TrialGpu) -> Any:
    """NVML's handle of the sampled GPU (NVML itself ignores CUDA_VISIBLE_DEVICES)."""
    entry = gpu.nvml_entry()
    if entry is None:
        return pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)

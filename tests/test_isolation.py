"""The isolation runner records every way a trial child can end, and survives all of them."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from autotune.backends.base import Outcome
from autotune.isolation.gpu import TrialGpu
from autotune.isolation.trial_process import check_cap, mentions_oom, run_isolated
from autotune.isolation.vram import VramSampler
from autotune.hardware import probe_hardware

TARGET = "test_isolation:Probe"  # the child imports this module: tests/ is on its path


class Probe:
    """A trial target whose setup and items do what they are told."""

    @staticmethod
    def _act(order: dict[str, Any]) -> None:
        action = order.get("action")
        if action == "sleep":
            if order.get("pid_file"):  # a grandchild that must die with the child
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
                Path(order["pid_file"]).write_text(str(child.pid))
            time.sleep(order["seconds"])
        elif action == "segfault":
            ctypes.string_at(0)
        elif action == "raise":
            raise RuntimeError(order["message"])
        elif action == "oom":
            print("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
                  "cudaMalloc failed: out of memory", file=sys.stderr, flush=True)
            os.abort()
        elif action == "exit":
            os._exit(order["status"])

    @staticmethod
    def setup(common: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        Probe._act(common)
        return None, {"load_seconds": 0.25, "extra": {"loaded_by": os.getpid()}}

    @staticmethod
    def run(state: Any, item: dict[str, Any]) -> dict[str, Any]:
        Probe._act(item)
        return {"decode_tps": [10.0, 12.0, 14.0], "prefill_tps": [100.0],
                "extra": {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}}


class FakeSampler:
    """Reports a fixed peak, as pynvml would on a GPU machine."""

    def __init__(self, peak: int):
        self.peak = peak
        self.lost = None

    def watch(self, pgid: int) -> None:
        pass

    def mark(self) -> int:
        return self.peak


def fake_sampler(peak: int):
    @contextmanager
    def factory(gpu: TrialGpu) -> Iterator[FakeSampler]:
        yield FakeSampler(peak)

    return factory


def test_ok_items_share_one_child_and_its_setup():
    results = run_isolated(TARGET, {}, [{}, {}, {}], deadline_s=60)
    assert [r.outcome for r in results] == [Outcome.OK] * 3
    assert len({r.extra["pid"] for r in results}) == 1
    first = results[0]
    assert first.decode_tps.mean == 12.0 and first.decode_tps.std == 2.0
    assert first.decode_tps.samples == [10.0, 12.0, 14.0]
    assert first.prefill_tps.mean == 100.0
    assert first.load_seconds == 0.25
    assert [r.load_seconds for r in results[1:]] == [0.0, 0.0]  # one load, counted once
    assert first.extra["loaded_by"] == first.extra["pid"]
    if probe_hardware().has_gpu:
        assert first.peak_vram_bytes is not None and first.peak_vram_bytes >= 0
    else:
        assert first.peak_vram_bytes is None  # no GPU, no figure


def test_segfault_is_a_crash_and_later_items_run_in_a_fresh_child():
    results = run_isolated(TARGET, {}, [{}, {"action": "segfault"}, {}], deadline_s=60)
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.CRASH, Outcome.OK]
    assert results[1].message.splitlines()[-1] == "item 2 of 3: killed by SIGSEGV"
    assert results[0].extra["pid"] != results[2].extra["pid"]


def test_exception_and_exit_status_are_crashes_with_their_message():
    results = run_isolated(TARGET, {}, [{"action": "raise", "message": "boom"}, {"action": "exit", "status": 3}], 60)
    assert [r.outcome for r in results] == [Outcome.CRASH, Outcome.CRASH]
    assert results[0].message.splitlines()[-1] == "item 1 of 2: RuntimeError: boom"
    assert "Traceback" in results[0].message  # the child's last output comes along
    assert results[1].message.splitlines()[-1] == "item 1 of 1: exited with status 3"


def test_out_of_memory_output_makes_an_oom():
    (result,) = run_isolated(TARGET, {}, [{"action": "oom"}], deadline_s=60)
    assert result.outcome is Outcome.OOM
    assert "cudaMalloc failed: out of memory" in result.message
    assert result.message.splitlines()[-1] == "item 1 of 1: killed by SIGABRT"


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    results = run_isolated(
        TARGET, {}, [{"action": "sleep", "seconds": 300, "pid_file": str(pid_file)}, {}], deadline_s=2
    )
    assert time.monotonic() - started < 30
    assert [r.outcome for r in results] == [Outcome.TIMEOUT, Outcome.OK]
    assert "no result within the 2 s deadline" in results[0].message
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]


def test_a_failed_setup_is_every_items_result():
    results = run_isolated(TARGET, {"action": "segfault"}, [{}, {}], deadline_s=60)
    assert [r.outcome for r in results] == [Outcome.CRASH, Outcome.CRASH]
    assert results[0].message.splitlines()[-1] == "setup: killed by SIGSEGV"
    (hung,) = run_isolated(TARGET, {"action": "sleep", "seconds": 300}, [{}], deadline_s=1)
    assert hung.outcome is Outcome.TIMEOUT and hung.message.startswith("setup:")


def test_peak_over_the_cap_is_over_cap_and_keeps_its_figures():
    gib = 2**30
    (measured,) = run_isolated(TARGET, {}, [{}], 60, sampler=fake_sampler(5 * gib))
    over = check_cap(measured, 4 * gib)
    assert over.outcome is Outcome.OVER_CAP
    assert over.peak_vram_bytes == 5 * gib and over.decode_tps.mean == 12.0
    assert "over the cap" in over.message
    assert check_cap(measured, 6 * gib) is measured and measured.outcome is Outcome.OK


def test_oom_patterns():
    assert mentions_oom("CUDA error: out of memory")
    assert mentions_oom("llama_init_from_model: failed to allocate compute buffers")
    assert mentions_oom("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not mentions_oom("warning: failed to allocate 512.00 MiB of pinned memory: out of memory")
    assert not mentions_oom("Segmentation fault")


class FakeNvml(types.ModuleType):
    """Just enough of pynvml: a device whose used memory and process list the test sets."""

    NVMLError = type("NVMLError", (Exception,), {})

    def __init__(self, used: int, processes: list[SimpleNamespace]):
        super().__init__("pynvml")
        self.used, self.processes = used, processes
        self.nvmlInit = self.nvmlShutdown = lambda: None
        self.nvmlDeviceGetHandleByIndex = lambda index: "gpu"
        self.nvmlDeviceGetMemoryInfo = lambda handle: SimpleNamespace(used=self.used)
        self.nvmlDeviceGetComputeRunningProcesses = lambda handle: self.processes


def test_sampler_sums_the_process_groups_own_figures(monkeypatch):
    gib = 2**30
    mine = SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * gib)
    nvml = FakeNvml(used=70 * gib, processes=[mine, SimpleNamespace(pid=1, usedGpuMemory=50 * gib)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with VramSampler(interval_s=0.01) as sampler:
        sampler.watch(os.getpgid(0))
        assert sampler.mark() == 3 * gib
        mine.usedGpuMemory = 5 * gib
        time.sleep(0.05)
        mine.usedGpuMemory = 4 * gib
        assert sampler.mark() == 5 * gib  # the peak since the last mark
        assert sampler.mark() == 4 * gib
        assert sampler.peak == 5 * gib


def test_sampler_falls_back_to_device_used_less_baseline(monkeypatch):
    gib = 2**30
    nvml = FakeNvml(used=10 * gib, processes=[])  # no per-process figures (e.g. another PID namespace)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with VramSampler(interval_s=0.01) as sampler:
        sampler.watch(os.getpgid(0))
        nvml.used = 12 * gib
        time.sleep(0.05)
        assert sampler.mark() == 2 * gib


def test_sampler_without_a_gpu_reports_none(monkeypatch):
    broken = FakeNvml(used=0, processes=[])
    broken.nvmlInit = lambda: (_ for _ in ()).throw(broken.NVMLError("no driver"))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with VramSampler() as sampler:
        sampler.watch(os.getpgid(0))
        assert sampler.mark() is None and sampler.peak is None


def test_a_gpu_that_stops_answering_is_gpu_lost_for_every_item(monkeypatch):
    nvml = FakeNvml(used=0, processes=[])
    calls = iter(range(1 << 30))

    def memory(handle):
        if next(calls) >= 2:  # the baseline and one sample answer; then the GPU is gone
            raise nvml.NVMLError("GPU is lost")
        return SimpleNamespace(used=nvml.used)

    nvml.nvmlDeviceGetMemoryInfo = memory
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    results = run_isolated(TARGET, {}, [{"action": "sleep", "seconds": 0.5}, {}], deadline_s=60)
    assert [r.outcome for r in results] == [Outcome.GPU_LOST, Outcome.GPU_LOST]
    assert results[0].message.splitlines()[-1] == "the GPU stopped answering NVML (GPU is lost)"


def test_the_sampler_watches_the_gpu_cuda_visible_devices_names(monkeypatch):
    nvml = FakeNvml(used=0, processes=[])
    opened = []
    nvml.nvmlDeviceGetHandleByIndex = lambda index: opened.append(index) or "gpu"
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: opened.append(uuid) or "gpu"
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # this process's own: a given list wins over it
    for visible, index, expected in (("3,5", 1, 5), ("GPU-abc,2", 0, "GPU-abc"), ("", 1, 1)):
        with VramSampler(TrialGpu(visible, index)):
            pass
        assert opened.pop() == expected
    for inherited, expected in (("4", 4), ("", 0)):  # no list given: the children see this process's
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", inherited)
        with VramSampler(TrialGpu()):
            pass
        assert opened.pop() == expected


def test_the_child_gets_its_gpu_in_its_environment_and_the_parents_stays_as_it_was(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    sampled: list[TrialGpu] = []

    @contextmanager
    def sampler(gpu: TrialGpu) -> Iterator[FakeSampler]:
        sampled.append(gpu)
        yield FakeSampler(0)

    before = dict(os.environ)
    (pinned,) = run_isolated(TARGET, {}, [{}], 60, gpu=TrialGpu("1"), sampler=sampler)
    (inherited,) = run_isolated(TARGET, {}, [{}], 60, sampler=sampler)
    assert dict(os.environ) == before
    assert pinned.extra["visible"] == "1" and inherited.extra["visible"] == "0,1"
    assert sampled == [TrialGpu("1"), TrialGpu()]  # the sampler watches the GPU the child runs on

"""What `autotune run` prints of each trial: one line, the knobs that differ from the backend's
defaults, speed, and peak VRAM against the cap; on a machine without a GPU, a note once and
neither GPU placement nor VRAM figures."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from autotune.backends.base import Backend, Measurement, Outcome, TrialResult, Workload
from autotune.backends.cache.backend import CacheBackend
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.hardware import GpuInfo, HardwareProfile
from autotune.model_info import inspect_model
from autotune.search import actions as runner
from autotune.search.records import TrialRecord
from autotune.search.trial_lines import TrialLines, cpu_only_note
from tests.fake_backend import FakeBackend

GIB = 2**30
CPU_ONLY = HardwareProfile(cpu_model="test CPU", physical_cores=16, logical_cores=32, ram_bytes=128 * GIB,
                           gpu_error="no NVIDIA driver")
H200 = GpuInfo(index=0, name="NVIDIA H200", total_bytes=141 * GIB, free_bytes=140 * GIB, pcie_generation=5,
               pcie_width=16, compute_capability="9.0", uuid="GPU-test")
WITH_GPU = replace(CPU_ONLY, gpus=[H200], gpu_error=None)
WORKLOAD = Workload()


def _plain(markup: str, width: int = 100) -> list[str]:
    """The line as a terminal of ``width`` columns shows it."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(markup, highlight=False, soft_wrap=True)
    return out.getvalue().splitlines()


def _lines(tiny_model: Path, hw: HardwareProfile, backend=None) -> TrialLines:
    backend = backend or LlamaCppBackend()
    return TrialLines({backend.name: backend}, inspect_model(tiny_model), hw, 12 * GIB, WORKLOAD, "tok/s")


def _ok(number: int, backend: str, config: dict, peak: float | None = 11.8) -> TrialRecord:
    result = TrialResult(Outcome.OK, decode_tps=Measurement(38.2, 0.4, [38.0, 38.2, 38.6]),
                         peak_vram_bytes=int(peak * GIB) if peak else None)
    return TrialRecord(number, backend, config, Outcome.OK, int(11.2 * GIB), result, 38.2, 0.4)


def _llama_config(tiny_model: Path, **knobs) -> dict:
    backend, model = LlamaCppBackend(), inspect_model(tiny_model)
    return {**backend.defaults(model, CPU_ONLY, WORKLOAD), **knobs}


def test_a_trial_line_is_one_line_naming_only_the_knobs_that_differ(tiny_model: Path):
    config = _llama_config(tiny_model, n_cpu_moe=2, n_ubatch=256, n_threads=8, n_threads_batch=8, flash_attn=False)
    line = _lines(tiny_model, WITH_GPU).line(_ok(12, "llama_cpp", config))
    assert line == ("#12  llama_cpp n_cpu_moe=2 n_ubatch=256 n_threads=8 flash_attn=off  "
                    "[green]38.2 ± 0.4 tok/s[/]  peak 11.8/12.0 GiB")  # n_threads_batch follows n_threads
    assert len(_plain(line)) == 1

    defaults = _lines(tiny_model, WITH_GPU).line(_ok(0, "llama_cpp", _llama_config(tiny_model)))
    assert _plain(defaults) == ["#0   llama_cpp (defaults)  38.2 ± 0.4 tok/s  peak 11.8/12.0 GiB"]
    unmeasured = _lines(tiny_model, WITH_GPU).line(_ok(1, "llama_cpp", config, peak=None))
    assert unmeasured.endswith("pred 11.2/12.0 GiB")


def test_pruned_and_failed_trials_say_why_in_one_line(tiny_model: Path):
    lines = _lines(tiny_model, WITH_GPU)
    config = _llama_config(tiny_model, n_ubatch=1024)
    pruned = TrialRecord(3, "llama_cpp", config, Outcome.PRUNED, int(13.1 * GIB))
    assert _plain(lines.line(pruned)) == ["#3   llama_cpp n_ubatch=1024  pruned: pred 13.1/12.0 GiB"]
    message = "loading the model\n[ggml] CUDA error: an illegal memory access was encountered " + "x" * 200 + "\n\n"
    crashed = TrialRecord(4, "llama_cpp", config, Outcome.CRASH, 11 * GIB, TrialResult(Outcome.CRASH, message))
    [shown] = _plain(lines.line(crashed), width=200)
    assert shown.startswith("#4   llama_cpp n_ubatch=1024  crash [ggml] CUDA error: an illegal")  # markup kept as text
    assert shown.endswith("…") and len(shown) < 110


def test_without_a_gpu_gpu_placement_and_vram_are_left_out(tiny_model: Path):
    lines = _lines(tiny_model, CPU_ONLY)
    config = _llama_config(tiny_model, n_cpu_moe=2, n_gpu_layers=3, op_offload=False, n_threads=4, n_threads_batch=4)
    assert _plain(lines.line(_ok(5, "llama_cpp", config))) == ["#5   llama_cpp n_threads=4  38.2 ± 0.4 tok/s"]
    assert _plain(lines.line(_ok(6, "llama_cpp", _llama_config(tiny_model, flash_attn=False)))) == [
        "#6   llama_cpp flash_attn=off  38.2 ± 0.4 tok/s"]  # flash attention has a CPU kernel: it stays
    pruned = lines.line(TrialRecord(7, "llama_cpp", config, Outcome.PRUNED, 13 * GIB))
    assert "pred" not in pruned and "GiB" not in pruned and "pruned" in pruned
    assert cpu_only_note(CPU_ONLY).startswith("no NVIDIA GPU here") and "only CPU settings are tuned" in cpu_only_note(CPU_ONLY)
    assert cpu_only_note(WITH_GPU) is None


def test_cache_lines_leave_out_the_budget_and_knobs_the_eviction_rule_fixes(tiny_model: Path):
    backend = CacheBackend()
    lines = _lines(tiny_model, WITH_GPU, backend)
    static = backend.fill_cap({"eviction": "static", "prefetch_depth": 2, "max_ctx": WORKLOAD.n_ctx}, int(11.5 * GIB))
    assert lines.knobs("cache", static) == "eviction=static prefetch_depth=2"  # no rebalance_interval=0, no vram_cap
    lfu = backend.fill_cap({"decay": 0.8, "chunk_rounds": 1, "max_ctx": WORKLOAD.n_ctx}, 12 * GIB)
    assert lines.knobs("cache", lfu) == "decay=0.8 chunk_rounds=1"
    assert _lines(tiny_model, CPU_ONLY, backend).knobs("cache", lfu) == "decay=0.8"  # Triton launch shapes need a GPU


@pytest.mark.parametrize("hw", [CPU_ONLY, WITH_GPU], ids=["cpu", "gpu"])
def test_run_prints_one_line_per_trial_and_the_cpu_note_once(tiny_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, hw: HardwareProfile):
    monkeypatch.setattr(runner, "probe_hardware", lambda: hw)
    out = io.StringIO()
    request = runner.StudyRequest(tiny_model, 3 * GIB, ["tests.fake_backend:FakeBackend"], 4, None,
                                  Workload(repetitions=2), "lines", f"sqlite:///{tmp_path / 'db.sqlite'}", False, 60.0,
                                  "tpe", 0)
    runner.run_study(request, Console(file=out, width=100, color_system=None), remeasure=False)
    shown = out.getvalue().splitlines()
    trials = [line for line in shown if line.startswith("#")]
    assert len(trials) >= 4 and all(line.count("#") == 1 for line in trials)
    assert sum("no NVIDIA GPU here" in line for line in shown) == (0 if hw.has_gpu else 1)
    if hw.has_gpu:
        assert all(("peak" in line) or ("pruned: pred" in line) for line in trials)
        assert any("n_cpu_moe=" in line for line in trials)
    else:
        assert not any("pred" in line or "peak" in line or "n_cpu_moe" in line for line in trials)
    assert not any("n_threads=2 " in line for line in trials)  # FakeBackend's default thread count
    assert FakeBackend.gpu_only_knobs == ("n_cpu_moe",)


class _Undeclared(FakeBackend):
    """A plugin backend from before ``defaults``: refused when loaded, not at its first trial line."""

    name = "undeclared"
    defaults = Backend.defaults  # still abstract: declared, never implemented


class _NotABackend:
    name = "not a backend"


def test_a_backend_without_the_abstract_members_is_refused_by_name():
    from autotune.backends.registry import get_backend
    from autotune.errors import AutotuneError

    with pytest.raises(AutotuneError, match=r"lacks defaults \(see autotune.backends.base.Backend\)"):
        get_backend("tests.test_trial_lines:_Undeclared")
    with pytest.raises(AutotuneError, match=r"is not a subclass of autotune.backends.base.Backend"):
        get_backend("tests.test_trial_lines:_NotABackend")
    assert get_backend("tests.fake_backend:FakeBackend").defaults(None, CPU_ONLY, WORKLOAD) == {"n_cpu_moe": 0,
                                                                                               "n_threads": 2}

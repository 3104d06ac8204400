"""llama-bench measures VRAM at its tests' short contexts; the llama_bench backend reports the
peak at the context the exported command serves, so a config that fits only at llama-bench's
contexts is over the cap, and the memory model calibrates on like for like."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.base import Measurement, Outcome, TrialResult, Workload
from autotune.backends.llama_cpp.bench import LlamaBenchBackend, served_context_bytes
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.backends.llama_cpp.vram_model import KV_PADDING
from autotune.isolation.trial_process import check_cap
from autotune.model_info import inspect_model

SERVED = Workload(n_prompt=512, n_gen=8, repetitions=1, n_ctx=4096)
MEASURED_PEAK = 3 * 2**30


def test_the_extra_is_the_kv_cache_of_the_tokens_llama_bench_never_holds(tiny_model: Path):
    model = inspect_model(tiny_model)
    config = {"n_gpu_layers": 99, "flash_attn": True}
    # llama-bench's longest test (the prefill) holds 512 tokens, and the same 512-token ubatch
    kv_missing = model.kv_bytes_per_token() * (SERVED.n_ctx - SERVED.n_prompt)
    assert served_context_bytes(config, model, SERVED) == pytest.approx(kv_missing, abs=model.n_layers)
    assert served_context_bytes({**config, "n_gpu_layers": 0}, model, SERVED) == 0  # no layer's KV on the GPU
    short = Workload(n_prompt=32, n_gen=8, repetitions=1, n_ctx=64)  # both pad to the same KV cache
    assert served_context_bytes(config, model, short) == 0
    assert KV_PADDING > 64


@pytest.fixture
def measured_at_short_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-bench's child, as if it ran on a GPU: every config peaks at MEASURED_PEAK."""
    def run_trials(self, configs, model_path, workload, deadline_s, vram_cap=None):
        return [TrialResult(Outcome.OK, decode_tps=Measurement.of([50.0]), peak_vram_bytes=MEASURED_PEAK)
                for _ in configs]

    monkeypatch.setattr(LlamaCppBackend, "run_trials", run_trials)


def test_trials_report_the_peak_at_the_served_context(tiny_model: Path, measured_at_short_context: None):
    config = {"n_gpu_layers": 99, "flash_attn": True}
    extra = served_context_bytes(config, inspect_model(tiny_model), SERVED)
    result = LlamaBenchBackend().run_trial(config, tiny_model, SERVED, deadline_s=10)
    assert result.peak_vram_bytes == MEASURED_PEAK + extra
    assert result.extra["measured_peak_vram_bytes"] == MEASURED_PEAK
    assert result.extra["served_context_bytes"] == extra > 0


def test_a_config_that_fits_only_at_llama_benchs_context_is_over_the_cap(
    tiny_model: Path, measured_at_short_context: None
):
    config = {"n_gpu_layers": 99, "flash_attn": True}
    cap = MEASURED_PEAK + served_context_bytes(config, inspect_model(tiny_model), SERVED) // 2
    (measured,) = LlamaBenchBackend().run_trials([config], tiny_model, SERVED, deadline_s=10)
    result = check_cap(measured, cap)  # as the tuner marks each trial
    assert result.outcome is Outcome.OVER_CAP
    assert "over the cap" in result.message

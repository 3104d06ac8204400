"""A real out-of-memory on the GPU (issue 9; runs on the GPU machine, skipped elsewhere).

A trial that asks for more memory than the card has free is recorded as ``oom`` with the cause
in its message, and the next trial on the same GPU, in a fresh child, runs as if nothing happened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.base import Outcome, TrialResult, Workload

pytestmark = pytest.mark.gpu

WORKLOAD = Workload(n_prompt=8, n_gen=4, repetitions=1, n_ctx=64)
LEFT_FREE = 3 * 2**30 // 2  # what another process leaves free on the card in the llama.cpp case


def _check_oom_then_ok(failed: TrialResult, fine: TrialResult) -> None:
    print(f"{failed.outcome.value}: {failed.message.splitlines()[-1]!r}; "
          f"then {fine.outcome.value}, {fine.decode_tps and round(fine.decode_tps.mean)} tok/s")
    assert failed.outcome is Outcome.OOM, failed.message
    assert "memory" in failed.message.lower()
    assert fine.outcome is Outcome.OK, fine.message


def test_llama_cpp_trial_beyond_what_another_process_left_free_is_an_oom_and_the_next_trial_runs(
        tiny_model: Path):
    """Another process holds all but 1.5 GiB of the card; a 2 GiB KV cache cannot be allocated."""
    pytest.importorskip("llama_cpp")
    torch = pytest.importorskip("torch")
    from autotune.backends.llama_cpp.backend import LlamaCppBackend

    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(free - LEFT_FREE, dtype=torch.uint8, device="cuda")
    normal = {"n_gpu_layers": 99, "n_cpu_moe": 0, "flash_attn": True, "n_ctx": 64}
    huge = {**normal, "n_ctx": 2**20}  # 4 layers x 2 x 2 heads x 64 x 2 bytes per token: 2 GiB
    try:
        _check_oom_then_ok(*LlamaCppBackend().run_trials([huge, normal], tiny_model, WORKLOAD, deadline_s=300))
    finally:
        del hog
        torch.cuda.empty_cache()


def test_cache_trial_whose_kv_cache_cannot_fit_the_card_is_an_oom_and_the_next_trial_runs(tiny_model: Path):
    pytest.importorskip("torch")
    from autotune.backends.cache.backend import CacheBackend

    normal = {"vram_cap": 4 * 2**30, "max_ctx": 64}
    huge = {"vram_cap": 2**60, "max_ctx": 2**30}  # a cap the budget cannot refuse: the allocation fails
    _check_oom_then_ok(*CacheBackend().run_trials([huge, normal], tiny_model, WORKLOAD, deadline_s=300))

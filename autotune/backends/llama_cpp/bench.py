"""The ``llama_bench`` backend: the same knobs as ``llama_cpp``, measured by the llama-bench binary.

What most users already trust. The binary is the one given (``autotune run --llama-bench``),
else ``llama-bench`` on PATH or next to this Python. Each trial runs it in the same isolation
(child process, deadline, VRAM sampler) as the llama_cpp engine. llama-bench sizes its
context to each test's tokens (no ``-c``: a prefill test gets n_prompt, a decode test n_gen),
so its KV cache and measured VRAM are those of a short context, while ``predict_vram`` keeps
the workload's n_ctx (what the exported command serves). A trial's peak is therefore reported
at the served context: the measured peak plus what the memory model adds from the longest
test's context to the served one (``served_context_bytes``); the cap, the memory model's
calibration and the winner all see that peak, and ``extra`` keeps the measured one. When
n_threads_batch differs from n_threads it runs every test at both counts (``-t a,b``);
prefill is read at n_threads_batch, decode at n_threads.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune.backends.base import Config, TrialResult, Workload
from autotune.backends.llama_cpp.commands import bench_argv, bench_path_problem
from autotune.backends.llama_cpp.knobs import normalize
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.backends.llama_cpp.vram_model import estimate_vram
from autotune.model_info import ModelProfile, inspect_model

def find_llama_bench(binary: str | None = None) -> str | None:
    """Path of the llama-bench to use, or None when there is none."""
    candidates = [binary] if binary else [shutil.which("llama-bench"), str(Path(sys.executable).parent / "llama-bench")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
    return None


def served_context_bytes(config: Config, model: ModelProfile, workload: Workload) -> int:
    """VRAM the served context (the config's n_ctx) takes beyond llama-bench's longest test
    context, by the memory model: mostly the KV cache of the tokens llama-bench never holds."""
    served = normalize({"n_ctx": workload.n_ctx, **config})
    total = estimate_vram(served, model).total
    tested = [n for n in (workload.n_prompt, workload.n_gen) if n]
    benched = max((estimate_vram({**served, "n_ctx": n}, model).total for n in tested), default=total)
    return max(0, total - benched)


class LlamaBenchBackend(LlamaCppBackend):
    name = "llama_bench"
    trial_target = "autotune.backends.llama_cpp.bench_trial"
    load_keys = None  # llama-bench loads the model for every run

    def __init__(self, binary: str | None = None):
        self.binary = binary

    def available(self) -> str | None:
        if find_llama_bench(self.binary) is None:
            where = self.binary or f"on PATH or next to {sys.executable}"
            return f"no llama-bench executable found ({where})"
        return None

    def supports(self, model: ModelProfile) -> str | None:
        return bench_path_problem(model.path) or super().supports(model)

    def run_trials(
        self, configs: list[Config], model_path: Path, workload: Workload, deadline_s: float
    ) -> list[TrialResult]:
        """As ``LlamaCppBackend.run_trials``, with peaks at the served context (module docstring)."""
        measured = super().run_trials(configs, model_path, workload, deadline_s)
        model = inspect_model(model_path) if any(r.peak_vram_bytes is not None for r in measured) else None
        return [self._at_served_context(result, config, model, workload)
                for result, config in zip(measured, configs, strict=True)]

    @staticmethod
    def _at_served_context(
        result: TrialResult, config: Config, model: ModelProfile | None, workload: Workload
    ) -> TrialResult:
        if result.peak_vram_bytes is None or model is None:
            return result
        extra = served_context_bytes(config, model, workload)
        return replace(result, peak_vram_bytes=result.peak_vram_bytes + extra,
                       extra={**result.extra, "measured_peak_vram_bytes": result.peak_vram_bytes,
                              "served_context_bytes": extra})

    def load_job(self, config: Config, model_path: Path) -> dict[str, Any]:
        return {"binary": find_llama_bench(self.binary)}

    def trial_item(self, config: Config, model_path: Path, workload: Workload) -> dict[str, Any]:
        binary = find_llama_bench(self.binary) or "llama-bench"
        argv = bench_argv(config, model_path, workload, binary, both_thread_counts=True) + ["-v"]
        return {"argv": argv, "n_prompt": workload.n_prompt, "n_gen": workload.n_gen,
                "n_threads": config["n_threads"], "n_threads_batch": config["n_threads_batch"]}

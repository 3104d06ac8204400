"""The ``llama_bench`` backend: the same knobs as ``llama_cpp``, measured by the llama-bench binary.

What most users already trust. The binary is the one given, else ``$AUTOTUNE_LLAMA_BENCH``,
else ``llama-bench`` on PATH or next to this Python. Each trial runs it in the same isolation
(child process, deadline, VRAM sampler) as the llama_cpp engine. llama-bench sizes its
context to the measured tokens (no ``-c``), so its KV cache and measured VRAM are those of
``n_ctx = n_prompt + n_gen``, while ``predict_vram`` keeps the workload's n_ctx (what the
exported command serves). When n_threads_batch differs from n_threads it runs every test at
both counts (``-t a,b``); prefill is read at n_threads_batch, decode at n_threads.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from autotune.backends.base import Config, Workload
from autotune.backends.commands import bench_argv
from autotune.backends.llama_cpp import LlamaCppBackend

ENV_BINARY = "AUTOTUNE_LLAMA_BENCH"


def find_llama_bench(binary: str | None = None) -> str | None:
    """Path of the llama-bench to use, or None when there is none."""
    candidates = [binary] if binary else [os.environ.get(ENV_BINARY), shutil.which("llama-bench"),
                                          str(Path(sys.executable).parent / "llama-bench")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
    return None


class LlamaBenchBackend(LlamaCppBackend):
    name = "llama_bench"
    trial_target = "autotune.backends.llama_bench_trial"
    load_keys = None  # llama-bench loads the model for every run

    def __init__(self, binary: str | None = None, gpu_index: int = 0):
        super().__init__(gpu_index)
        self.binary = binary

    def available(self) -> str | None:
        if find_llama_bench(self.binary) is None:
            where = self.binary or f"on PATH, next to {sys.executable} or in ${ENV_BINARY}"
            return f"no llama-bench executable found ({where})"
        return None

    def _job(self, config: Config, model_path: Path) -> dict[str, Any]:
        return {"binary": find_llama_bench(self.binary)}

    def _item(self, config: Config, model_path: Path, workload: Workload) -> dict[str, Any]:
        binary = find_llama_bench(self.binary) or "llama-bench"
        argv = bench_argv(config, model_path, workload, binary, both_thread_counts=True) + ["-v"]
        return {"argv": argv, "n_prompt": workload.n_prompt, "n_gen": workload.n_gen,
                "n_threads": config["n_threads"], "n_threads_batch": config["n_threads_batch"]}

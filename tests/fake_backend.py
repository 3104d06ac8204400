"""A test backend with a known speed surface and injectable faults (no llama.cpp needed).

Decode speed rises with threads and falls with experts on the CPU; VRAM falls with experts
on the CPU. ``FAKE_BACKEND_FAULTS`` maps n_cpu_moe values to a fault: ``crash``, ``hang``,
``oom``, ``gpu_lost`` (e.g. "3=crash,5=hang"). Each trial runs a real child process; an ok
result names the worker process and the CUDA_VISIBLE_DEVICES of its child in ``extra`` (the
child runs on the backend's ``gpu``).
``FAKE_BACKEND_BARRIER=DIR:N``: a trial first waits (up to a minute) until trials under N
different CUDA_VISIBLE_DEVICES values have started, so that every worker gets trials however
slowly the others start.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from autotune.backends.base import Backend, Config, Measurement, Outcome, TrialResult, Workload

GIB = 2**30


class FakeBackend(Backend):
    name = "fake"  # it has no server (served_format None): `autotune run` does not serve its finalists
    gpu_only_knobs = ("n_cpu_moe",)

    def available(self) -> str | None:
        return None

    def supports(self, model) -> str | None:
        return None if model.is_moe else "needs experts"

    def suggest(self, trial, model, hw, workload) -> Config:
        return {
            "n_cpu_moe": trial.suggest_int("n_cpu_moe", 0, model.n_layers),
            "n_threads": trial.suggest_int("n_threads", 1, 4),
        }

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        return [{"n_cpu_moe": model.n_layers, "n_threads": 2}]

    def defaults(self, model, hw, workload, config: Config | None = None) -> Config:
        return {"n_cpu_moe": 0, "n_threads": 2}

    def predict_vram(self, config: Config, model, workload: Workload) -> int:
        return GIB + (model.n_layers - config["n_cpu_moe"]) * GIB // 2

    @staticmethod
    def speed(config: Config, model) -> float:
        return 10.0 + 2.0 * config["n_threads"] + 3.0 * (model.n_layers - config["n_cpu_moe"])

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        from autotune.model_info import inspect_model

        model = inspect_model(model_path)
        fault = dict(item.split("=") for item in os.environ.get("FAKE_BACKEND_FAULTS", "").split(",") if item)
        kind = fault.get(str(config["n_cpu_moe"]), "none")
        _wait_at_barrier(os.environ.get("FAKE_BACKEND_BARRIER"))
        sleep = float(os.environ.get("FAKE_BACKEND_SECONDS", "0.05"))
        code = {"crash": "import os; os.abort()", "hang": "import time; time.sleep(3600)"}.get(
            kind, f"import os, time; time.sleep({sleep}); print(os.environ.get('CUDA_VISIBLE_DEVICES', ''))")
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **self.gpu.env()}, capture_output=True,
                                  text=True, timeout=min(deadline_s, 5.0 if kind == "hang" else deadline_s))
        except subprocess.TimeoutExpired:
            return TrialResult(Outcome.TIMEOUT, "deadline passed", wall_seconds=time.monotonic() - started)
        if done.returncode != 0:
            return TrialResult(Outcome.CRASH, f"child died with code {done.returncode}", wall_seconds=time.monotonic() - started)
        if kind == "oom":
            return TrialResult(Outcome.OOM, "CUDA error: out of memory", wall_seconds=time.monotonic() - started)
        if kind == "gpu_lost":
            return TrialResult(Outcome.GPU_LOST, "the GPU stopped answering NVML (GPU is lost)",
                               wall_seconds=time.monotonic() - started)
        rng = random.Random(json.dumps(config, sort_keys=True) + str(time.time()))
        base = self.speed(config, model)
        samples = [base * (1 + rng.uniform(-0.02, 0.02)) for _ in range(workload.repetitions)]
        return TrialResult(
            Outcome.OK,
            decode_tps=Measurement.of(samples),
            prefill_tps=Measurement.of([10 * s for s in samples]),
            peak_vram_bytes=self.predict_vram(config, model, workload) + 10 * 2**20,
            load_seconds=0.01,
            wall_seconds=time.monotonic() - started,
            extra={"worker_pid": os.getpid(), "cuda_visible_devices": done.stdout.strip() or None},
        )

    def launch_command(self, config: Config, model_path: Path, fmt: str) -> str:
        return shlex.join(["fake-server", "-m", str(model_path), "--config", json.dumps(config, sort_keys=True)])

    def parse_command(self, command: str) -> tuple[Config, Path]:
        words = shlex.split(command)
        return json.loads(words[words.index("--config") + 1]), Path(words[words.index("-m") + 1])


def _wait_at_barrier(spec: str | None, timeout_s: float = 60.0) -> None:
    if not spec:
        return
    folder, n = spec.rsplit(":", 1)
    Path(folder, os.environ.get("CUDA_VISIBLE_DEVICES", "none")).touch()
    deadline = time.monotonic() + timeout_s
    while len(os.listdir(folder)) < int(n) and time.monotonic() < deadline:
        time.sleep(0.05)

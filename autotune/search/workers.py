"""Several processes on one study, through the shared database (Optuna's RDB storage does the
scheduling: each worker asks the study for its next trial).

- ``autotune worker`` (``join_study``) joins a study from its row in our tables: the model
  must have the study's fingerprint, and this machine the study's hardware fingerprint (one
  study measures one kind of machine; another machine starts a study of its own on the same
  database, and the best-config tables keep both, keyed by hardware).
- ``autotune run --gpus 0,1`` (``run_on_gpus``) starts one worker process per local GPU, each
  pinned with ``CUDA_VISIBLE_DEVICES`` in its environment, shows their trials as they land, then
  races the best configs and stores the winner itself (its backends run on the first GPU:
  ``run_study`` gives them that ``TrialGpu``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState
from rich.console import Console

from autotune.backends.base import Outcome, Workload
from autotune.errors import AutotuneError
from autotune.hardware import probe_hardware
from autotune.isolation.gpu import VISIBLE_ENV, TrialGpu
from autotune.model_info import inspect_model
from autotune.search.objective import UNITS
from autotune.search.records import TrialRecord
from autotune.search.study import Budget, StudyOutcome, Tuner
from autotune.storage import Database, shown_url

POLL_S = 0.5
STOP_WAIT_S = 60  # how long stopped workers get to give their trials back


def join_study(
    model_path: Path,
    study_name: str,
    storage_url: str | None,
    trials: int | None,
    seconds: float | None,
    console: Console,
    llama_bench: str | None = None,
) -> StudyOutcome:
    """Add trials to an existing study: ``trials`` of this worker's own, else until the study's budget is spent.
    ``llama_bench``: the executable of the llama_bench backend (None: the one it finds)."""
    from autotune.search.actions import _usable_backends
    from autotune.search.trial_lines import TrialLines, cpu_only_note

    db = Database(storage_url)
    row = db.study(study_name)
    if row is None:
        raise AutotuneError(f"no study named {study_name!r} in {shown_url(db.url)}: start it with autotune run "
                            "MODEL --vram-cap ... --study NAME --storage URL")
    settings = row.settings
    if "backend_specs" not in settings:
        raise AutotuneError(f"study {study_name!r} was made by an older autotune and takes no workers")
    model = inspect_model(model_path)
    if model.fingerprint != row.model_fingerprint:
        raise AutotuneError(f"{model_path} is not the model of study {study_name!r} "
                            f"(fingerprint {model.fingerprint}, the study's is {row.model_fingerprint})")
    hardware = probe_hardware()
    if hardware.fingerprint != row.hardware_fingerprint:
        raise AutotuneError(
            f"study {study_name!r} measures other hardware ({row.hardware_fingerprint}; this machine is "
            f"{hardware.fingerprint}) and measurements of different machines do not mix: start a study of this "
            "machine's own on the same database (autotune run ... --storage URL)")
    workload = Workload.from_json(settings["workload"])
    backends = _usable_backends(settings["backend_specs"], model, llama_bench)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    unit = UNITS[workload.objective]
    tuner = Tuner(db, model, hardware, backends, row.vram_cap, workload, study_name, settings.get("sampler", "tpe"),
                  None, settings.get("trial_timeout_s", 600.0), batch=settings.get("batch", 2))
    lines = TrialLines.of(tuner, unit)
    tuner.on_trial = lambda record: console.print(lines.line(record), highlight=False, soft_wrap=True)
    tuner.recover_interrupted()
    budget = Budget(trials=None, seconds=seconds, own_trials=trials) if trials else Budget(settings.get("trials"), seconds)
    pinned = os.environ.get(VISIBLE_ENV)  # what started this worker gave it
    console.print(f"worker {os.getpid()} joins study {study_name}" + (f" on GPU {pinned}" if pinned else ""))
    if note := cpu_only_note(hardware):
        console.print(note)
    outcome = tuner.run(model_path, budget, conclude=False)
    measured = sum(record.outcome is not Outcome.PRUNED for record in outcome.records)
    console.print(f"worker {os.getpid()} measured {measured} trial(s) for study {study_name}")
    if outcome.interrupted:
        raise SystemExit(130)
    return outcome


def _worker_command(model_path: Path, tuner: Tuner, seconds: float | None, llama_bench: str | None) -> list[str]:
    command = [sys.executable, "-m", "autotune.cli", "worker", str(model_path), "--study", tuner.study_name,
               "--storage", tuner.db.url]
    command += ["--llama-bench", llama_bench] if llama_bench else []
    return command + (["--time", f"{seconds:g}s"] if seconds else [])


def run_on_gpus(
    tuner: Tuner,
    gpus: list[str],
    model_path: Path,
    seconds: float | None,
    remeasure: bool,
    on_trial: Callable[[TrialRecord], None],
    console: Console,
    llama_bench: str | None = None,
) -> StudyOutcome:
    """One worker per GPU until the study's budget is spent; then the race (where the tuner's
    backends run) and the winner. ``llama_bench``: what each worker's llama_bench backend runs."""
    outcome = StudyOutcome(tuner.study_name)
    seen = {t.number for t in tuner.study.get_trials(deepcopy=False) if t.state.is_finished()}
    with tempfile.TemporaryDirectory(prefix="autotune-workers-") as tmp:
        workers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for gpu in gpus:
            log = Path(tmp, f"gpu-{gpu}.log")
            env = {**os.environ, **TrialGpu(gpu).env()}
            with log.open("wb") as handle:
                # own sessions: a Ctrl-C reaches the parent only, which stops each worker once
                process = subprocess.Popen(_worker_command(model_path, tuner, seconds, llama_bench), env=env,
                                           stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            workers.append((gpu, process, log))
        console.print(f"{len(workers)} workers on study {tuner.study_name}, GPUs {', '.join(gpus)}")
        try:
            while True:
                running = any(process.poll() is None for _, process, _ in workers)
                for trial in tuner.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
                    if trial.number not in seen and (record := TrialRecord.from_trial(trial)).measured_here:
                        seen.add(trial.number)
                        outcome.records.append(record)
                        if record.result is not None:
                            outcome.load_seconds += record.result.load_seconds
                            outcome.trial_seconds += record.result.wall_seconds + record.result.load_seconds
                        on_trial(record)
                if not running:
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            _stop(workers)
            outcome.interrupted = True
            tuner.db.set_study_status(tuner.study_name, "interrupted")
            return outcome
        for gpu, process, log in workers:
            if process.returncode != 0:
                lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
                how = lines[-1] if lines else f"exit status {process.returncode}"
                console.print(f"[red]the worker on GPU {gpu} ended with status {process.returncode}[/]: {how}",
                              highlight=False)
    concluded = tuner.run(model_path, Budget(trials=0, seconds=None), remeasure=remeasure)
    outcome.winner = concluded.winner
    outcome.interrupted = concluded.interrupted
    outcome.load_seconds += concluded.load_seconds
    outcome.trial_seconds += concluded.trial_seconds
    return outcome


def _stop(workers: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    """Interrupt every worker (each gives its running trials back), then wait for them."""
    for _, process, _ in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    for _, process, _ in workers:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""A recorded study written straight into a database, with fixed numbers (for the dashboard's tests).

The trials are what the tuner stores (tests/fake_backend.py's knobs and speed surface), so the
dashboard reads them as it reads a real study; nothing here depends on the clock or a temp path.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from datetime import datetime, timezone

import optuna
from optuna.distributions import IntDistribution

from autotune.backends.base import Measurement, Outcome, TrialResult, Workload
from autotune.search.records import TrialRecord
from autotune.storage import Database, StudyRow

GIB = 2**30
CAP = int(2.75 * GIB)
LAYERS = 4  # of the tiny model
WORKLOAD = Workload(n_prompt=64, n_gen=32, repetitions=3, n_ctx=256, objective="decode")
DISTRIBUTIONS = {"n_cpu_moe": IntDistribution(0, LAYERS), "n_threads": IntDistribution(1, 4)}
FAKE = "tests.fake_backend:FakeBackend"
# (n_cpu_moe, n_threads, outcome): what a short study of the fake backend under a 2.75 GiB cap leaves
TRIALS = [(4, 2, "ok"), (1, 4, "ok"), (0, 3, "pruned"), (2, 1, "crash"), (1, 2, "ok"), (3, 4, "ok"),
          (2, 4, "ok"), (2, 3, "oom"), (1, 3, "ok"), (3, 1, "ok"), (4, 4, "ok"), (2, 2, "ok")]
MESSAGES = {"crash": "llama.cpp aborted\nchild died with code -6", "oom": "CUDA error: out of memory"}


def predicted(n_cpu_moe: int) -> int:
    return GIB + (LAYERS - n_cpu_moe) * GIB // 2


def speed(n_cpu_moe: int, n_threads: int) -> float:
    return 10.0 + 2.0 * n_threads + 3.0 * (LAYERS - n_cpu_moe)


def register(db: Database, name: str, trials: int | None = 11, status: str = "running",
             seconds: float | None = None) -> optuna.Study:
    """The rows ``autotune run`` writes before its first trial, and the empty Optuna study."""
    db.upsert_model("f" * 16, "tiny", "/models/tiny.gguf", {})
    db.upsert_hardware("h" * 16, "no GPU · test CPU", {})
    db.add_study(StudyRow(
        name=name, model_fingerprint="f" * 16, hardware_fingerprint="h" * 16, vram_cap=CAP,
        workload_key=WORKLOAD.key(), status=status, created=datetime(2026, 1, 1, tzinfo=timezone.utc),
        settings={"backends": ["fake"], "backend_specs": [FAKE], "trials": trials, "seconds": seconds,
                  "model_name": "tiny", "workload": asdict(WORKLOAD), "sampler": "tpe", "batch": 1},
    ))
    return optuna.create_study(study_name=name, storage=db.optuna_storage(), direction="maximize")


def add_trial(study: optuna.Study, n_cpu_moe: int, n_threads: int, outcome: str) -> None:
    """One finished trial as the tuner records it."""
    config = {"n_cpu_moe": n_cpu_moe, "n_threads": n_threads}
    record = TrialRecord(len(study.get_trials(deepcopy=False)), "fake", config, Outcome(outcome), predicted(n_cpu_moe),
                         predicted_vram_raw=predicted(n_cpu_moe))
    if record.outcome is Outcome.PRUNED:
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params=config,
                                                  distributions=DISTRIBUTIONS, user_attrs=record.to_user_attrs()))
        return
    if record.outcome is Outcome.OK:
        base = speed(n_cpu_moe, n_threads)
        decode = Measurement.of([base * 0.99, base, base * 1.01])
        result = TrialResult(Outcome.OK, decode_tps=decode, prefill_tps=Measurement.of([10 * s for s in decode.samples]),
                             peak_vram_bytes=predicted(n_cpu_moe) + 10 * 2**20, load_seconds=0.5, wall_seconds=2.0)
        value, std = decode.mean, decode.std
    else:
        result = TrialResult(Outcome(outcome), MESSAGES.get(outcome, outcome), wall_seconds=1.0)
        value, std = 0.0, 0.0
    record = replace(record, result=result, objective_std=std, constraint=1.0)
    study.add_trial(optuna.trial.create_trial(value=value, params=config, distributions=DISTRIBUTIONS,
                                              user_attrs=record.to_user_attrs()))


def add_running(study: optuna.Study, n_cpu_moe: int, n_threads: int) -> optuna.Trial:
    """A trial asked and sampled but not yet told (its child is measuring it)."""
    with warnings.catch_warnings():  # Optuna warns of heartbeats outside optimize(), as the tuner knows
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask(DISTRIBUTIONS)
    config = {"n_cpu_moe": n_cpu_moe, "n_threads": n_threads}
    TrialRecord(trial.number, "fake", config, predicted_vram=predicted(n_cpu_moe)).save(trial)
    return trial


def recorded_study(url: str, name: str = "demo", status: str = "finished") -> Database:
    """A whole study: twelve trials (ok, pruned, crash, oom), ``status`` in our table."""
    db = Database(url)
    study = register(db, name, status=status)
    for n_cpu_moe, n_threads, outcome in TRIALS:
        add_trial(study, n_cpu_moe, n_threads, outcome)
    return db

"""A tuner part: ``autotune run`` (the same code) for one backend at one cap, in a fresh database
of its own (no warm start from other parts), then every trial and the winner read back from it."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from autotune.backends.base import Outcome, Workload
from autotune.backends.registry import get_backend
from autotune.errors import AutotuneError
from autotune.search.actions import StudyRequest, run_study
from autotune.search.pooling import results_of, within_cap
from autotune.search.records import TrialRecord, finalists
from autotune.storage import Database
from autotune.studies.definition import StudyDefinition
from autotune.studies.plan import Part, cap_label
from autotune.studies.rows import launch_command, pooled_row
from autotune.units import parse_duration


def tuner_argv(definition: StudyDefinition, part: Part, model_name: str) -> list[str]:
    """The ``autotune run`` command this part runs (its database a fresh file named after the part)."""
    tuner, workload = definition.tuner, definition.workload
    assert part.cap is not None
    argv = ["autotune", "run", model_name, "--vram-cap", cap_label(part.cap), "--backends", part.backend,
            "--trials", str(tuner.trials or 0)]
    if tuner.minutes is not None:
        argv += ["--time", f"{tuner.minutes:g}m"]
    argv += ["--objective", workload.objective, "--ctx", str(workload.n_ctx), "--prompt-tokens", str(workload.n_prompt),
             "--gen-tokens", str(workload.n_gen), "--repetitions", str(workload.repetitions),
             "--trial-timeout", tuner.trial_timeout, "--sampler", tuner.sampler, "--batch", str(tuner.batch),
             "--remeasure" if tuner.remeasure else "--no-remeasure"]
    if tuner.seed is not None:
        argv += ["--seed", str(tuner.seed)]
    return argv + ["--storage", f"sqlite:///{part.name}.db", "--study", f"{definition.name}-{part.name}"]


def _trial_rows(study: optuna.Study, workload: Workload) -> list[dict[str, Any]]:
    """Every finished trial in order, with the seconds from the study's start to its end."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    rows = []
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        if record.outcome is None:
            continue
        if record.result is not None:
            row = pooled_row(record.config, [record.result], workload, record.predicted_vram)
        else:  # pruned (predicted over the cap), or stopped before it measured
            row = {"config": record.config, "predicted_vram": record.predicted_vram, "outcome": record.outcome.value}
        row |= {"number": trial.number, "backend": record.backend, "seeded": record.seeded,
                "elapsed_s": (trial.datetime_complete - min(starts)).total_seconds() if trial.datetime_complete else None}
        rows.append(row)
    return rows


def _winner_row(study: optuna.Study, backend: str, config: dict[str, Any], cap: int, workload: Workload,
                model_path: Path) -> dict[str, Any]:
    """The winner with every sample of its config within the cap: its trials' and the race's."""
    trials = [t for t in study.get_trials(deepcopy=False) if (record := TrialRecord.from_trial(t)).outcome is Outcome.OK
              and record.backend == backend and record.config == config]
    results = within_cap(results_of(study, trials), cap)
    row = pooled_row(config, results, workload, TrialRecord.from_trial(trials[0]).predicted_vram)
    return row | {"backend": backend, "trial": trials[0].number,
                  "command": launch_command(get_backend(backend), config, model_path)}


def run_tuner_part(definition: StudyDefinition, part: Part, model_path: Path, console: Console) -> dict[str, Any]:
    """The part's record: its command, every trial, the finalists and the winner (or the error
    that ended it, e.g. a cap below the smallest config: recorded, so the study goes on; a lost
    GPU is the machine's fault, not the part's: then nothing is recorded)."""
    assert part.cap is not None
    argv = tuner_argv(definition, part, model_path.name)
    tuner, workload = definition.tuner, definition.workload
    record: dict[str, Any] = {"command": shlex.join(argv)}
    with tempfile.TemporaryDirectory(prefix="autotune-study-") as work:
        url = f"sqlite:///{Path(work) / (part.name + '.db')}"
        try:
            request = StudyRequest(
                model_path=model_path, vram_cap=part.cap, backend_names=[part.backend], trials=tuner.trials,
                seconds=tuner.minutes * 60 if tuner.minutes is not None else None, workload=workload,
                study_name=argv[-1], storage_url=url, trial_timeout_s=parse_duration(tuner.trial_timeout),
                sampler=tuner.sampler, seed=tuner.seed, batch=tuner.batch,
            )
            outcome = run_study(request, console, remeasure=tuner.remeasure)
        except AutotuneError as exc:
            record["error"] = str(exc)
            outcome = None
        try:
            study = optuna.load_study(study_name=argv[-1], storage=Database(url).optuna_storage())
        except KeyError:  # it ended before the study was made
            return record | {"trials": [], "winner": None}
        record["trials"] = _trial_rows(study, workload)
        if any(row["outcome"] == Outcome.GPU_LOST.value for row in record["trials"]):
            raise AutotuneError(f"{record.get('error', 'the GPU was lost')} (part {part.name} is not written; "
                                "it runs again on the next call)")
        record["finalists"] = finalists(study)
        winner = outcome.winner if outcome is not None else None
        record["winner"] = (_winner_row(study, winner.backend, winner.config, part.cap, workload, model_path)
                            if winner is not None else None)
    return record

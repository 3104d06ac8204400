"""The dashboard's read model: one study in the database, read again on every poll, as plain rows.

Everything the screen shows comes from the database (Optuna's trials and our tables), so a study
running in another process, on another machine sharing the database, or long finished looks
the same. Reading never changes the study; ``request_stop`` is the one write.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.backends.base import Backend, Config, Measurement, Outcome, Workload
from autotune.backends.registry import get_backend
from autotune.errors import AutotuneError
from autotune.search.objective import UNITS
from autotune.search.actions import launch_command
from autotune.search.records import TrialRecord, request_stop, stop_requested
from autotune.storage import BestConfigRow, Database, ModelRow, StudyRow, shown_url

MIN_IMPORTANCE_TRIALS = 10  # complete trials before PED-ANOVA's importances (top 10% against the rest) mean anything
FAILED = frozenset({Outcome.OOM, Outcome.CRASH, Outcome.TIMEOUT, Outcome.OVER_CAP, Outcome.STOPPED, Outcome.GPU_LOST})
RUNNING = "running"


@dataclass(frozen=True)
class TrialRow:
    """One trial as the dashboard shows it."""

    number: int
    backend: str
    config: Config
    outcome: str  # an Outcome's value, or "running"
    objective: float | None = None
    objective_std: float | None = None
    decode: Measurement | None = None
    prefill: Measurement | None = None
    predicted_vram: int | None = None
    peak_vram: int | None = None
    message: str = ""
    warm_start_from: str | None = None  # copied from this earlier study, not measured here

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK.value

    @property
    def failed(self) -> bool:
        return self.outcome in {outcome.value for outcome in FAILED}

    @property
    def vram(self) -> int | None:
        """Measured peak where there is one, else the prediction."""
        return self.peak_vram if self.peak_vram is not None else self.predicted_vram


@dataclass(frozen=True)
class StudySnapshot:
    """The study at one poll."""

    name: str
    status: str  # running | finished | interrupted | stopped (from our table)
    model_name: str
    vram_cap: int
    objective: str
    unit: str
    trials_budget: int | None
    seconds_budget: float | None
    rows: tuple[TrialRow, ...]
    stop_requested: bool = False
    winner: int | None = None  # trial number of the stored winner, once the study has one
    winner_objective: Measurement | None = None  # the winner's samples pooled with its re-measurements
    winner_served: dict | None = None  # what the winner's exported command served (autotune.served figures)
    winner_command: str | None = None  # the stored winner's launch command, as `autotune export` prints it
    importances: tuple[tuple[str, float], ...] = ()
    complete_trials: int = 0  # Optuna's COMPLETE trials (what importances are computed from)
    eta_seconds: float | None = None  # while running: time to the end of the trial budget or the time budget

    @cached_property
    def measured(self) -> list[TrialRow]:
        """Trials run by this study (what its budget counts): neither pruned, running nor copied."""
        return [row for row in self.rows if row.outcome not in (Outcome.PRUNED.value, RUNNING) and not row.warm_start_from]

    @cached_property
    def best(self) -> TrialRow | None:
        """The stored winner, else the fastest ok trial measured here within the cap."""
        if self.winner is not None:
            return next((row for row in self.rows if row.number == self.winner), None)
        fits = [row for row in self.measured if row.ok and (row.peak_vram or 0) <= self.vram_cap]
        return max(fits, key=lambda row: row.objective or 0.0, default=None)

    @cached_property
    def varying_knobs(self) -> list[str]:
        """Config keys whose values differ between trials, in first-seen order."""
        keys: dict[str, set[str]] = {}
        for row in self.rows:
            for key, value in row.config.items():
                keys.setdefault(key, set()).add(repr(value))
        present = [key for key in keys if all(key in row.config for row in self.rows)]
        return [key for key in keys if len(keys[key]) > 1 or key not in present]


def _outcome(trial: FrozenTrial, record: TrialRecord) -> str:
    if trial.state is TrialState.RUNNING:
        return RUNNING
    if record.outcome is not None:
        return record.outcome.value
    if trial.state is TrialState.FAIL:
        return Outcome.STOPPED.value  # a dead worker's trial has no outcome of its own
    return Outcome.PRUNED.value if trial.state is TrialState.PRUNED else RUNNING


def _row(trial: FrozenTrial) -> TrialRow | None:
    record = TrialRecord.from_trial(trial)
    if record.backend is None or record.config is None:
        return None  # asked but not yet sampled, or never got that far
    outcome = _outcome(trial, record)
    result = record.result
    message = record.message or (result.message if result else "")
    ok = outcome == Outcome.OK.value
    return TrialRow(
        number=trial.number,
        backend=record.backend,
        config=record.config,
        outcome=outcome,
        objective=trial.value if ok else None,
        objective_std=record.objective_std if ok else None,
        decode=result.decode_tps if result else None,
        prefill=result.prefill_tps if result else None,
        predicted_vram=record.predicted_vram,
        peak_vram=result.peak_vram_bytes if result else None,
        message=message.strip(),
        warm_start_from=record.warm_start_from,
    )


def _eta(trials: list[FrozenTrial], measured: int, budget: int | None, seconds: float | None, now: datetime) -> float | None:
    """Seconds left: the measured trials' pace over the trials still to run, and/or the time budget."""
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.datetime_start and t.datetime_complete
            and TrialRecord.from_trial(t).measured_here]
    if not done:
        return None
    first = min(t.datetime_start for t in done)
    estimates = []
    if budget is not None:
        span = (max(t.datetime_complete for t in done) - first).total_seconds()
        estimates.append(max(0.0, budget - measured) * span / len(done))
    if seconds is not None:
        estimates.append(max(0.0, seconds - (now - first).total_seconds()))
    return min(estimates) if estimates else None


def latest_study(db: Database) -> str:
    studies = db.studies()
    if not studies:
        raise AutotuneError(f"no study in {shown_url(db.url)} yet: start one with autotune run MODEL --vram-cap ...")
    return max(studies, key=lambda row: row.created).name


class StudyView:
    """One study of one database; ``snapshot`` reads it afresh."""

    def __init__(self, db: Database, name: str):
        self.db = db
        row = db.study(name)
        if row is None:
            raise AutotuneError(f"no study named {name!r} in {shown_url(db.url)} (see: autotune history)")
        self.name = name
        self.row: StudyRow = row
        if "workload" not in row.settings:
            raise AutotuneError(f"study {name!r} was made by an older autotune, which did not store its workload")
        self.workload = Workload.from_json(row.settings["workload"])
        try:
            self.study = optuna.load_study(study_name=name, storage=db.optuna_storage())
        except KeyError:
            raise AutotuneError(f"study {name!r} has no trials storage in {shown_url(db.url)}") from None
        with db.session() as session:
            model = session.get(ModelRow, row.model_fingerprint)
        self.model_name = str(row.settings.get("model_name") or (model.name if model else row.model_fingerprint))
        self.model_path = Path(model.path) if model else None
        self._backends: dict[str, Backend | None] = {}
        self._importances: tuple[int, tuple[tuple[str, float], ...]] = (-1, ())

    def snapshot(self) -> StudySnapshot:
        row = self.db.study(self.name) or self.row
        trials = self.study.get_trials(deepcopy=False)
        rows = tuple(r for r in map(_row, trials) if r is not None)
        settings = row.settings
        winner = self._winner(row)
        snapshot = StudySnapshot(
            name=self.name,
            status=row.status,
            model_name=self.model_name,
            vram_cap=row.vram_cap,
            objective=self.workload.objective,
            unit=UNITS[self.workload.objective],
            trials_budget=settings.get("trials"),
            seconds_budget=settings.get("seconds"),
            rows=rows,
            stop_requested=stop_requested(self.study),
            winner=winner.result.get("trial") if winner else None,
            winner_objective=Measurement(winner.objective_mean, winner.objective_std) if winner else None,
            winner_served=winner.result.get("served") if winner else None,
            winner_command=self._stored_command(winner) if winner else None,
            importances=self._importances_of(trials),
            complete_trials=sum(t.state is TrialState.COMPLETE for t in trials),
        )
        if row.status != "running":
            return snapshot
        eta = _eta(trials, len(snapshot.measured), snapshot.trials_budget, snapshot.seconds_budget,
                   datetime.now())  # naive local time, as Optuna stores its trial times
        return replace(snapshot, eta_seconds=eta)

    def _winner(self, row: StudyRow) -> BestConfigRow | None:
        """The best config this study stored (none where an earlier study's winner still stands)."""
        if row.status != "finished":
            return None
        for best in self.db.best_configs(row.model_fingerprint, row.hardware_fingerprint, row.vram_cap):
            if best.study_name == self.name and best.workload_key == row.workload_key:
                return best
        return None

    def _importances_of(self, trials: list[FrozenTrial]) -> tuple[tuple[str, float], ...]:
        """Optuna's parameter importances (PED-ANOVA), recomputed only when complete trials are added."""
        complete = sum(t.state is TrialState.COMPLETE for t in trials)
        if complete < MIN_IMPORTANCE_TRIALS:
            return ()
        if complete != self._importances[0]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = optuna.importance.get_param_importances(
                        self.study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
                value = tuple((name, float(score)) for name, score in found.items())
            except (ValueError, RuntimeError):  # e.g. no parameter common to all trials, or all values equal
                value = ()
            self._importances = (complete, value)
        return self._importances[1]

    def backend(self, name: str) -> Backend | None:
        """The study's backend of that name (loaded from its settings), or None where it cannot load here."""
        if name not in self._backends:
            self._backends[name] = None
            for spec in self.row.settings.get("backend_specs") or self.row.settings.get("backends", []):
                try:
                    backend = get_backend(spec)
                except AutotuneError:
                    continue
                if backend.name == name:
                    self._backends[name] = backend
                    break
        return self._backends[name]

    def _stored_command(self, winner: BestConfigRow) -> str | None:
        backend = self.backend(winner.backend)
        if backend is None or self.model_path is None:
            return None
        return launch_command(backend, winner.config, self.model_path)

    def command(self, row: TrialRow) -> str:
        """The launch command of a trial's config (what ``autotune run`` prints for a winner)."""
        backend = self.backend(row.backend)
        if backend is None:
            raise AutotuneError(f"backend {row.backend!r} cannot be loaded here, so there is no launch command")
        if self.model_path is None:
            raise AutotuneError("the study's model is not in the database, so there is no launch command")
        return launch_command(backend, row.config, self.model_path)

    def request_stop(self) -> None:
        request_stop(self.study)


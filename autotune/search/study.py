"""The tuner: an Optuna study over backends' spaces, under a VRAM cap, one isolated trial at a time.

Flow of one trial (``dispatch``): Optuna asks → the backend samples a config → the calibrated
memory model predicts its VRAM → over the cap it is recorded as pruned (never run), else the
backend measures it in a child process → the objective and the cap constraint go back to Optuna.
Every outcome (ok, oom, crash, timeout, over_cap, stopped) is a recorded trial (``records``).
Where a backend names its load-time knobs (``load_keys``), a sampled trial brings siblings
that share its model load (the sampler picks their other knobs), measured by one child.
Before the first trial, earlier studies' measurements are copied (``warm_start``) and each
backend's baselines queued (``baselines``). At the end the best few configs race (``race``);
the winner is the finalist with the highest mean over all its samples, stored as the best config
for model x machine x cap x workload (``winner``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial

from autotune.backends.base import Backend, Measurement, TrialResult, Workload
from autotune.errors import AutotuneError
from autotune.hardware import HardwareProfile
from autotune.model_info import ModelProfile
from autotune.search import winner
from autotune.search.baselines import Baselines, calibrate_from_study
from autotune.search.dispatch import Dispatcher
from autotune.search.liveness import fail_dead_trials
from autotune.search.vram_calibration import MemoryCalibration
from autotune.search.race import Race
from autotune.search.records import TrialRecord, clear_stop
from autotune.search.samplers import make_sampler
from autotune.search.study_context import FAILED_CONSTRAINT, StopRequested, StudyContext
from autotune.search.study_outcome import StudyOutcome
from autotune.search.warm_start import warm_start
from autotune.storage import BestConfigRow, Database, StudyRow

MAX_ASKED_WITHOUT_RUN = 200  # sampled configs in a row all predicted over the cap: the cap is too small


@dataclass
class Budget:
    trials: int | None = 30  # measured trials of the study (pruned ones cost nothing and do not count)
    seconds: float | None = None
    own_trials: int | None = None  # measured trials of this process (a worker's share)

    def exhausted(self, measured: int, started: float, own: int = 0) -> bool:
        if self.room(measured, own, 1) <= 0:
            return True
        return self.seconds is not None and time.monotonic() - started >= self.seconds

    def room(self, measured: int, own: int, default: int) -> int:
        """Measured trials still to run (``default`` without a count)."""
        left = [limit - done for limit, done in ((self.trials, measured), (self.own_trials, own)) if limit is not None]
        return min(left) if left else default


def _constraints(trial: FrozenTrial) -> list[float]:
    constraint = TrialRecord.from_trial(trial).constraint
    return [constraint if constraint is not None else FAILED_CONSTRAINT]


class Tuner(StudyContext):
    """One study: its backends, cap, workload and budget, over one database; the parts (baselines,
    dispatch, race, winner) each do one job on what this context holds."""

    def __init__(
        self,
        db: Database,
        model: ModelProfile,
        hardware: HardwareProfile,
        backends: list[Backend],
        vram_cap: int,
        workload: Workload,
        study_name: str,
        sampler: str = "tpe",
        seed: int | None = None,
        trial_timeout_s: float = 600.0,
        on_trial: Callable[[TrialRecord], None] | None = None,
        batch: int = 2,
    ):
        study = optuna.create_study(
            study_name=study_name,
            storage=db.optuna_storage(),
            direction="maximize",
            sampler=make_sampler(sampler, seed=seed, constraints_func=_constraints),
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # marked experimental; a warning line on every run says nothing to users
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["objective"])
        super().__init__(db, study, model, hardware, {backend.name: backend for backend in backends}, vram_cap,
                         workload, study_name, trial_timeout_s, MemoryCalibration())
        self.on_trial = on_trial or (lambda record: None)
        self.baselines = Baselines(self)
        self.dispatcher = Dispatcher(self, max(1, batch), lambda record: self.on_trial(record))
        self.race = Race(self)

    # -- before the first trial -------------------------------------------------------------------

    def warm_start(self) -> int:
        """Copy earlier measurements into this study and queue the earlier winners (``warm_start``)."""
        return warm_start(self)

    def seed_baselines(self, probes_first: bool = True, names: Iterable[str] | None = None) -> None:
        """Queue the backends' baselines (``Baselines.seed``)."""
        self.baselines.seed(probes_first, names)

    def clear_stop_request(self) -> None:
        """A study that is started or resumed runs until its budget is spent or it is stopped anew."""
        clear_stop(self.study)

    def recover_interrupted(self) -> int:
        """Trials left running by dead workers (a killed tuner): failed and queued again once.
        Trials of live workers, here or on other machines, are left alone."""
        return fail_dead_trials(self.study)

    # -- the whole study --------------------------------------------------------------------------

    def run(self, model_path: Path, budget: Budget, remeasure: bool = True, conclude: bool = True) -> StudyOutcome:
        """Trials until the budget is spent, then (with ``conclude``) the race and the winner.
        A worker joining a study only adds trials: the ``run`` that owns the study concludes it."""
        outcome = StudyOutcome(self.study_name)
        calibrate_from_study(self)
        started = time.monotonic()
        asked_without_run = 0
        try:
            while not budget.exhausted(measured := len(self.measured_trials()), started, own := outcome.own_trials()):
                self.check_stop()
                room = budget.room(measured, own, self.dispatcher.batch)
                fail_dead_trials(self.study)  # another worker's, so its trial is run again
                self.baselines.feed(self.dispatcher.batch)
                if self.dispatcher.run_batch(model_path, outcome, room):
                    self.baselines.reseed_outdated()
                    asked_without_run = 0
                else:
                    asked_without_run += 1
                    if asked_without_run >= MAX_ASKED_WITHOUT_RUN:
                        raise AutotuneError(
                            "the sampler keeps proposing configs predicted over the cap; "
                            "the cap is too small for this model and backend"
                        )
            self.check_stop()  # where other workers spent the budget: a stopped study is not concluded
            if not conclude:
                return outcome
            if remeasure:
                self.race.run(model_path, outcome)
            else:
                self.race.skip()
        except (KeyboardInterrupt, StopRequested) as stop:
            outcome.interrupted = True
            outcome.stop_requested = isinstance(stop, StopRequested)
            if conclude:
                self.db.set_study_status(self.study_name, "stopped" if isinstance(stop, StopRequested) else "interrupted")
            return outcome
        outcome.winner = self.choose_winner()
        self.db.set_study_status(self.study_name, "finished")
        return outcome

    # -- the race and the winner ------------------------------------------------------------------

    def config_groups(self) -> list[list[FrozenTrial]]:
        return self.race.config_groups()

    def pooled(self, group: list[FrozenTrial]) -> tuple[Measurement, list[TrialResult]]:
        return self.race.pooled(group)

    def ranked_finalists(self) -> list[BestConfigRow]:
        return self.race.ranked_finalists()

    def choose_winner(self) -> BestConfigRow | None:
        return winner.choose_winner(self, self.ranked_finalists())

    def kept(self, row: BestConfigRow) -> BestConfigRow:
        return winner.kept(self, row)

    def save_winner(self, row: BestConfigRow) -> BestConfigRow:
        return winner.save_winner(self, row)


def register_study(
    db: Database,
    model: ModelProfile,
    hardware: HardwareProfile,
    name: str,
    vram_cap: int,
    workload: Workload,
    settings: dict[str, Any],
) -> None:
    """Record model, machine and study in our tables (idempotent; a resumed study keeps its row)."""
    db.upsert_model(model.fingerprint, model.name, model.path, model.to_json())
    gpu = hardware.gpus[0].name if hardware.gpus else "no GPU"
    db.upsert_hardware(hardware.fingerprint, f"{gpu} · {hardware.cpu_model}", hardware.to_json())
    if db.study(name) is None:
        db.add_study(
            StudyRow(
                name=name,
                model_fingerprint=model.fingerprint,
                hardware_fingerprint=hardware.fingerprint,
                vram_cap=vram_cap,
                workload_key=workload.key(),
                settings=settings,
                created=datetime.now(timezone.utc),
            )
        )
    else:
        db.set_study_status(name, "running")

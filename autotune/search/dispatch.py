"""One step of a study: ask Optuna for a trial, sample its config, predict its VRAM; over the cap
it is recorded as pruned (never run), else it is measured in a child process, with the trials
that share its model load (siblings, where the backend names its load-time knobs), and the
results go back to Optuna. A lost GPU ends the study; a Ctrl-C gives the running trials back.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autotune import interrupts
from autotune.backends.base import Config, Measurement, Outcome, TrialResult
from autotune.errors import AutotuneError
from autotune.isolation.trial_process import check_cap
from autotune.search.liveness import Heartbeat, identity
from autotune.search.vram_calibration import relative_error
from autotune.search.objective import objective_of
from autotune.search.records import TrialRecord, queued_attrs
from autotune.search.study_context import StudyContext
from autotune.search.study_outcome import StudyOutcome


@dataclass
class _Asked:
    """A trial asked of Optuna, its config, and the VRAM predicted for it."""

    trial: optuna.Trial
    backend: str
    config: Config
    raw: int
    predicted: int

    def record(self, outcome: Outcome, result: TrialResult | None = None,
               measurement: Measurement | None = None) -> TrialRecord:
        """The trial as the progress display sees it, once it has an outcome."""
        return TrialRecord(self.trial.number, self.backend, self.config, outcome, self.predicted, result,
                           measurement.mean if measurement else 0.0, measurement.std if measurement else None,
                           predicted_vram_raw=self.raw)


class Dispatcher:
    """Runs the study's trials in batches that share a model load, and tells Optuna their results."""

    def __init__(self, context: StudyContext, batch: int, report: Callable[[TrialRecord], None]):
        self.context = context
        self.batch = batch  # trials per model load, where the backend allows it
        self.report = report  # told every finished trial, as it finishes
        self._heartbeat = Heartbeat(context.study._storage)

    def run_batch(self, model_path: Path, outcome: StudyOutcome, room: int) -> int:
        """Ask, predict, prune or run (with siblings sharing the load), tell. Returns how many ran."""
        lead = self._ask()
        if lead.predicted > self.context.vram_cap:
            self._prune(lead, outcome)
            return 0
        group = [lead] + self._siblings(lead, min(self.batch, room) - 1, outcome)
        load_keys = self.context.backends[lead.backend].load_keys
        for part in _load_groups(group, load_keys):
            self._measure_and_record(part, model_path, outcome)
        return len(group)

    # -- asking -----------------------------------------------------------------------------------

    def _sample(self, trial: optuna.Trial) -> tuple[str, Config]:
        context = self.context
        names = list(context.backends)
        name = names[0] if len(names) == 1 else trial.suggest_categorical("backend", names)
        backend = context.backends[name]
        config = backend.suggest(trial, context.model, context.hardware, context.workload)
        if context.fills_budget(name):
            config = backend.fill_cap(config, context.budget(name))
        return name, config

    def _ask(self) -> _Asked:
        context = self.context
        with warnings.catch_warnings():  # Optuna warns of heartbeats outside optimize(): ours beat for ask-and-tell
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            with interrupts.deferred(), context.db.ask_lock():  # a trial is never left running unclaimed
                trial = context.study.ask()
                self._heartbeat.add(trial._trial_id)
                TrialRecord(trial.number, worker=identity(trial.number)).save(trial)
        name, config = self._sample(trial)
        raw = context.backends[name].predict_vram(config, context.model, context.workload)
        predicted = context.calibration.predict(name, raw)
        TrialRecord(trial.number, name, config, predicted_vram=predicted, predicted_vram_raw=raw).save(trial)
        return _Asked(trial, name, config, raw, predicted)

    def _prune(self, asked: _Asked, outcome: StudyOutcome) -> None:
        TrialRecord(asked.trial.number, outcome=Outcome.PRUNED).save(asked.trial)
        self._tell(asked.trial, state=TrialState.PRUNED)
        record = asked.record(Outcome.PRUNED)
        outcome.records.append(record)
        self.report(record)

    # -- siblings: trials that share the lead's model load -----------------------------------------

    def _siblings(self, lead: _Asked, room: int, outcome: StudyOutcome) -> list[_Asked]:
        """Up to ``room`` more trials that share the lead's model load. A queued lead takes the
        queued trials right behind it that share it (queue order kept); a freely sampled lead,
        with nothing queued, gets new trials with its load-time knobs fixed, the rest sampled."""
        study = self.context.study
        load_keys = self.context.backends[lead.backend].load_keys
        if load_keys is None or room <= 0:
            return []
        if TrialRecord.from_attrs(lead.trial.number, lead.trial.user_attrs).seeded is not None:
            return self._queued_siblings(lead, load_keys, room, outcome)  # every trial this tuner queues is seeded
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return []
        fixed = {key: value for key, value in lead.trial.params.items() if key in load_keys or key == "backend"}
        siblings: list[_Asked] = []
        while len(siblings) < room:
            study.enqueue_trial(fixed, user_attrs=queued_attrs(f"shares the model load of trial {lead.trial.number}"),
                                skip_if_exists=False)
            sibling = self._ask()
            if sibling.predicted > self.context.vram_cap:
                self._prune(sibling, outcome)
                break
            siblings.append(sibling)
        return siblings

    def _queued_siblings(self, lead: _Asked, load_keys: tuple[str, ...], room: int,
                         outcome: StudyOutcome) -> list[_Asked]:
        """The next queued trials while they share the lead's load (a baseline after a baseline
        of the same backend, say); over-cap ones are pruned on the way."""
        siblings: list[_Asked] = []
        while len(siblings) < room:
            queued = min(self.context.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                         key=lambda t: t.number, default=None)
            fixed = queued.system_attrs.get("fixed_params", {}) if queued is not None else {}
            if queued is None or fixed.get("backend", lead.backend) != lead.backend or any(
                    fixed.get(key, lead.config.get(key)) != lead.config.get(key) for key in load_keys):
                break
            sibling = self._ask()  # that queued trial, unless another worker took it first
            if sibling.predicted > self.context.vram_cap:
                self._prune(sibling, outcome)
                continue
            siblings.append(sibling)
        return siblings

    # -- measuring and telling --------------------------------------------------------------------

    def _measure_and_record(self, group: list[_Asked], model_path: Path, outcome: StudyOutcome) -> None:
        """Measure trials that share one model load, and tell the study their results."""
        context = self.context
        lead = group[0]
        try:
            results = context.measure(lead.backend, [asked.config for asked in group], model_path)
        except KeyboardInterrupt:
            self._give_back(group, Outcome.STOPPED, "stopped by the user")
            raise
        lost = next((result for result in results if result.outcome is Outcome.GPU_LOST), None)
        if lost is not None:
            cause = lost.message.splitlines()[-1]
            self._give_back(group, Outcome.GPU_LOST, cause)
            context.db.set_study_status(context.study_name, "stopped")
            raise AutotuneError(f"the GPU stopped answering during trial {lead.trial.number} ({cause}): the study "
                                "stops; check the GPU (nvidia-smi), then continue it with --resume")
        results = [check_cap(result, context.vram_cap) for result in results]
        for asked, result in zip(group, results):
            record = asked.record(result.outcome, result, self._record(asked, result))
            outcome.records.append(record)
            outcome.load_seconds += result.load_seconds
            outcome.trial_seconds += result.wall_seconds + result.load_seconds
            self.report(record)

    def _record(self, asked: _Asked, result: TrialResult) -> Measurement:
        """Store the trial's result, calibrate the memory model by its peak, tell Optuna; returns
        its objective."""
        context = self.context
        peak = result.peak_vram_bytes
        if peak and (result.ok or result.outcome is Outcome.OVER_CAP):
            context.calibration.add(asked.backend, asked.raw, peak)
        measurement = objective_of(result, context.workload)
        TrialRecord(asked.trial.number, outcome=result.outcome, result=result, objective_std=measurement.std,
                    constraint=context.constraint(result, asked.predicted),
                    prediction_error=relative_error(asked.predicted, peak) if peak else None).save(asked.trial)
        self._tell(asked.trial, measurement.mean if result.ok else 0.0)
        return measurement

    def _tell(self, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
        self.context.study.tell(trial, *args, **kwargs)
        self._heartbeat.discard(trial._trial_id)

    def _give_back(self, group: list[_Asked], outcome: Outcome, cause: str) -> None:
        """Trials cut off by something outside them: failed with the cause, queued again."""
        for asked in group:
            TrialRecord(asked.trial.number, outcome=outcome, message=cause).save(asked.trial)
            self._tell(asked.trial, state=TrialState.FAIL)
            self.context.study.enqueue_trial(asked.trial.params, user_attrs=queued_attrs(
                f"retry of {outcome.value} {asked.trial.number}"))


def _load_groups(group: list[_Asked], load_keys: tuple[str, ...] | None) -> list[list[_Asked]]:
    """Consecutive runs of the group that share one model load (the same backend and
    load-time knobs): a queued sibling another worker's ask displaced may not."""
    def load(asked: _Asked) -> tuple:
        return asked.backend, tuple(asked.config.get(key) for key in load_keys or ())

    return [list(part) for _, part in itertools.groupby(group, key=load)]

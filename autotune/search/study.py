"""The tuner: an Optuna study over backends' spaces, under a VRAM cap, one isolated trial at a time.

Flow of one trial: Optuna asks → the backend samples a config → the calibrated memory model
predicts its VRAM → over the cap it is recorded as pruned (never run), else the backend
measures it in a child process → the objective and the cap constraint go back to Optuna.
Every outcome (ok, oom, crash, timeout, over_cap, stopped) is a recorded trial.
Where a backend names its load-time knobs (``load_keys``), a sampled trial brings siblings
that share its model load (the sampler picks their other knobs), measured by one child.
At the end the best few configs race: measured again in rotating rounds until the leader
stands clear of the others by its spread (or the rounds run out); the winner is the
finalist with the highest mean over all its samples, stored as the best config for
model x machine x cap x workload.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import interrupts
from autotune.backends.base import Backend, Config, Measurement, Outcome, TrialResult, Workload
from autotune.errors import AutotuneError
from autotune.hardware import HardwareProfile
from autotune.model_info import ModelProfile
from autotune.search.liveness import WORKER_ATTR, Heartbeat, fail_dead_trials, identity
from autotune.search.memory import MemoryCalibration, relative_error
from autotune.search.objective import lower_bound, objective_of
from autotune.search.samplers import make_sampler
from autotune.storage import BestConfigRow, Database, StudyRow

FAILED_CONSTRAINT = 1.0  # constraint value of a trial that produced no measurement
REMEASURE_TOP = 3  # finalists of the race at the end
RACE_ROUNDS = 3  # at most this many re-measurements of each finalist
STOP_ATTR = "stop_requested"  # study user attr: every process on the study stops after its running trials


class StopRequested(Exception):
    """A stop asked through the database (the dashboard): taken between trials, like Ctrl-C."""


def request_stop(study: optuna.Study) -> None:
    """Ask every process running this study to stop once its running trials are recorded."""
    study.set_user_attr(STOP_ATTR, True)


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


@dataclass
class TrialRecord:
    """What the progress display and the tests see of one finished trial."""

    number: int
    backend: str
    config: Config
    outcome: Outcome
    predicted_vram: int
    result: TrialResult | None = None
    objective: float = 0.0
    objective_std: float = 0.0


@dataclass
class StudyOutcome:
    study_name: str
    records: list[TrialRecord] = field(default_factory=list)
    winner: BestConfigRow | None = None
    load_seconds: float = 0.0
    trial_seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C, SIGTERM or a stop request ended it before its budget
    stop_requested: bool = False  # by a stop request (the dashboard's x), not a signal


def _own(outcome: StudyOutcome) -> int:
    """Trials this process measured (pruned ones were never run)."""
    return sum(record.outcome is not Outcome.PRUNED for record in outcome.records)


def _constraints(trial: FrozenTrial) -> list[float]:
    return [trial.user_attrs.get("constraint", FAILED_CONSTRAINT)]


def _config_key(trial: FrozenTrial) -> str:
    return json.dumps([trial.user_attrs["backend"], trial.user_attrs["config"]], sort_keys=True)


def _standard_error(measurement: Measurement) -> float:
    return measurement.std / math.sqrt(len(measurement.samples)) if measurement.samples else math.inf


def _stands_clear(leader: Measurement, other: Measurement) -> bool:
    """The leader's mean less its standard error is above the other's mean plus its own."""
    return leader.mean - _standard_error(leader) > other.mean + _standard_error(other)


@dataclass
class _Asked:
    """A trial asked of Optuna, its config, and the VRAM predicted for it."""

    trial: optuna.Trial
    backend: str
    config: Config
    raw: int
    predicted: int


class Tuner:
    """One study: its backends, cap, workload and budget, over one database."""

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
        self.db = db
        self.model = model
        self.hardware = hardware
        self.backends = {backend.name: backend for backend in backends}
        self.vram_cap = vram_cap
        self.workload = workload
        self.study_name = study_name
        self.trial_timeout_s = trial_timeout_s
        self.on_trial = on_trial or (lambda record: None)
        self.batch = max(1, batch)  # trials per model load, where the backend allows it
        self._calibrated: set[str] = set()  # backends whose baselines were sized with a calibration
        self._baseline_caps: dict[str, int] = {}  # the cap each backend's baselines were last sized for
        self._baselines_held = False  # only the formula probes are queued yet (seed_baselines)
        self.calibration = MemoryCalibration()
        storage = db.optuna_storage()
        self.study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            sampler=make_sampler(sampler, seed=seed, constraints_func=_constraints),
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # marked experimental; a warning line on every run says nothing to users
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(["objective"])
        self._heartbeat = Heartbeat(storage)

    # -- what earlier runs left -------------------------------------------------

    def _earlier_trials(self) -> Iterable[tuple[str, FrozenTrial]]:
        """Measured trials of earlier studies on the same model, machine and workload."""
        for row in self.db.studies(self.model.fingerprint, self.hardware.fingerprint):
            if row.name == self.study_name or row.workload_key != self.workload.key():
                continue
            try:
                earlier = optuna.load_study(study_name=row.name, storage=self.study._storage)
            except KeyError:
                continue
            for trial in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if trial.user_attrs.get("backend") in self.backends and "warm_start_from" not in trial.user_attrs:
                    yield row.name, trial

    def warm_start(self) -> int:
        """Copy earlier measurements into this study and try the earlier winners first.

        Constraints are recomputed against this study's cap. Returns the trials copied.
        """
        if self.study.trials:
            return 0  # resuming: the study already holds what it needs
        copied = 0
        for source, trial in self._earlier_trials():
            result = TrialResult.from_json(trial.user_attrs["result"])
            attrs = dict(trial.user_attrs)
            attrs["warm_start_from"] = source
            attrs["constraint"] = self._constraint(result, attrs["predicted_vram"])
            if result.ok and result.peak_vram_bytes:
                self.calibration.add(attrs["backend"], attrs["predicted_vram_raw"], result.peak_vram_bytes)
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=trial.params,
                    distributions=trial.distributions,
                    value=trial.value,
                    user_attrs=attrs,
                )
            )
            copied += 1
        for best in self.db.best_configs(self.model.fingerprint, self.hardware.fingerprint):
            if best.workload_key == self.workload.key() and best.backend in self.backends and best.vram_cap <= self.vram_cap:
                # measured again even though a copy exists: the winner is checked on today's machine
                self._enqueue(best.backend, best.config, reason=f"best of {best.study_name}", skip_if_exists=False)
        return copied

    def seed_baselines(self, probes_first: bool = True, names: Iterable[str] | None = None) -> None:
        """Queue the baselines of each backend (of ``names``, else all), sized for
        ``_baseline_cap`` (so "the largest split that fits" is what fits by this machine's
        measurements). Configs already queued or tried are skipped.

        While a backend's formula has no measured peak on this machine yet, only its first
        baseline (the probe) is queued, and everything else after the first measured trial:
        else the split the formula alone allows, and every other backend's baselines, would
        be queued before the split the calibrated formula allows (which a short budget may
        then never reach)."""
        probes_only = probes_first and any(self._formula_uncalibrated(name) for name in self.backends)
        for name in names or self.backends:
            cap_for_formula = self._baseline_cap(name)
            configs = self.backends[name].baselines(self.model, self.hardware, cap_for_formula, self.workload)
            if probes_only:
                configs = configs[:1] if self._formula_uncalibrated(name) else []
            calibrated = bool(self.calibration.residuals.get(name))
            for config in configs:
                self._enqueue(name, config, reason="baseline, memory model calibrated" if calibrated else "baseline")
            if calibrated:
                self._calibrated.add(name)
            self._baseline_caps[name] = cap_for_formula
        self._baselines_held = probes_only

    def _baseline_cap(self, name: str) -> int:
        """The cap a backend's baselines are sized for. A runtime that fills the budget it is
        given gets the budget sampled configs get (never above the cap). A backend with a
        memory formula gets the cap less the largest error measured above its formula here,
        so no split measured over the cap is queued again: the next one that fits is."""
        if self._fills_budget(name):
            return self._budget(name)
        return self.vram_cap - self.calibration.largest(name)

    def _fills_budget(self, name: str) -> bool:
        """Whether the backend is a runtime that fills the VRAM budget its config names (``fill_cap``)."""
        return self.backends[name].fills_budget

    def _budget(self, name: str) -> int:
        """The budget a budget-filling runtime gets: the cap, less what this machine measured
        above its predictions (never more than the cap)."""
        return self.vram_cap - max(0, self.calibration.correction(name))

    def _formula_uncalibrated(self, name: str) -> bool:
        """Whether the backend's baselines follow a memory formula not yet checked by a measurement."""
        return not self._fills_budget(name) and not self.calibration.residuals.get(name)

    def _reseed_outdated_baselines(self) -> None:
        """After the first measured trial, the baselines held back. After a backend's first
        measured peak, its baselines sized without one. After a peak above a formula by more
        than any before (a split that fit by the formula, measured over the cap), that
        backend's baselines for the cap the formula now allows. A budget-filling runtime's
        budget follows every trial, so its baselines are sized again once only."""
        measured = [name for name in self.backends if self.calibration.residuals.get(name)]
        outdated = [name for name in measured if name not in self._calibrated
                    or (not self._fills_budget(name) and self._baseline_caps.get(name) != self._baseline_cap(name))]
        if self._baselines_held or outdated:
            self.seed_baselines(probes_first=False, names=None if self._baselines_held else outdated)

    def _enqueue(self, backend: str, config: Config, reason: str, skip_if_exists: bool = True) -> None:
        params = dict(config)
        if len(self.backends) > 1:
            params["backend"] = backend
        self.study.enqueue_trial(params, user_attrs={"seeded": reason}, skip_if_exists=skip_if_exists)

    def clear_stop_request(self) -> None:
        """A study that is started or resumed runs until its budget is spent or it is stopped anew."""
        if self.study.user_attrs.get(STOP_ATTR):
            self.study.set_user_attr(STOP_ATTR, False)

    def _check_stop(self) -> None:
        interrupts.raise_if_requested()
        if self.study.user_attrs.get(STOP_ATTR):
            raise StopRequested

    def recover_interrupted(self) -> int:
        """Trials left running by dead workers (a killed tuner): failed and queued again once.
        Trials of live workers, here or on other machines, are left alone."""
        return fail_dead_trials(self.study)

    def _calibrate_from_study(self) -> None:
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if "warm_start_from" in trial.user_attrs:
                continue  # already counted by warm_start
            result = TrialResult.from_json(trial.user_attrs["result"])
            if result.ok and result.peak_vram_bytes:
                self.calibration.add(trial.user_attrs["backend"], trial.user_attrs["predicted_vram_raw"], result.peak_vram_bytes)

    # -- one trial --------------------------------------------------------------

    def _constraint(self, result: TrialResult, predicted: int) -> float:
        if result.ok:
            peak = result.peak_vram_bytes if result.peak_vram_bytes is not None else predicted
            return float(peak - self.vram_cap)
        return FAILED_CONSTRAINT

    def _sample(self, trial: optuna.Trial) -> tuple[str, Config]:
        names = list(self.backends)
        name = names[0] if len(names) == 1 else trial.suggest_categorical("backend", names)
        backend = self.backends[name]
        config = backend.suggest(trial, self.model, self.hardware, self.workload)
        if self._fills_budget(name):
            config = backend.fill_cap(config, self._budget(name))
        return name, config

    def _ask(self) -> _Asked:
        with warnings.catch_warnings():  # Optuna warns of heartbeats outside optimize(): ours beat for ask-and-tell
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            with interrupts.deferred(), self.db.ask_lock():  # a trial is never left running unclaimed
                trial = self.study.ask()
                self._heartbeat.add(trial._trial_id)
                trial.set_user_attr(WORKER_ATTR, identity(trial.number))
        name, config = self._sample(trial)
        raw = self.backends[name].predict_vram(config, self.model, self.workload)
        predicted = self.calibration.predict(name, raw)
        for key, value in (("backend", name), ("config", config), ("predicted_vram_raw", raw), ("predicted_vram", predicted)):
            trial.set_user_attr(key, value)
        return _Asked(trial, name, config, raw, predicted)

    def _prune(self, asked: _Asked, outcome: StudyOutcome) -> None:
        asked.trial.set_user_attr("outcome", Outcome.PRUNED.value)
        self._tell(asked.trial, state=TrialState.PRUNED)
        record = TrialRecord(asked.trial.number, asked.backend, asked.config, Outcome.PRUNED, asked.predicted)
        outcome.records.append(record)
        self.on_trial(record)

    def _siblings(self, lead: _Asked, room: int, outcome: StudyOutcome) -> list[_Asked]:
        """Up to ``room`` more trials that share the lead's model load. A queued lead takes the
        queued trials right behind it that share it (queue order kept); a freely sampled lead,
        with nothing queued, gets new trials with its load-time knobs fixed, the rest sampled."""
        load_keys = self.backends[lead.backend].load_keys
        if load_keys is None or room <= 0:
            return []
        if "seeded" in lead.trial.user_attrs:  # every trial this tuner queues carries it
            return self._queued_siblings(lead, load_keys, room, outcome)
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return []
        fixed = {key: value for key, value in lead.trial.params.items() if key in load_keys or key == "backend"}
        siblings: list[_Asked] = []
        while len(siblings) < room:
            self.study.enqueue_trial(fixed, user_attrs={"seeded": f"shares the model load of trial {lead.trial.number}"},
                                     skip_if_exists=False)
            sibling = self._ask()
            if sibling.predicted > self.vram_cap:
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
            queued = min(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                         key=lambda t: t.number, default=None)
            fixed = queued.system_attrs.get("fixed_params", {}) if queued is not None else {}
            if queued is None or fixed.get("backend", lead.backend) != lead.backend or any(
                    fixed.get(key, lead.config.get(key)) != lead.config.get(key) for key in load_keys):
                break
            sibling = self._ask()  # that queued trial, unless another worker took it first
            if sibling.predicted > self.vram_cap:
                self._prune(sibling, outcome)
                continue
            siblings.append(sibling)
        return siblings

    @staticmethod
    def _load_groups(group: list[_Asked], load_keys: tuple[str, ...] | None) -> list[list[_Asked]]:
        """Consecutive runs of the group that share one model load (the same backend and
        load-time knobs): a queued sibling another worker's ask displaced may not."""
        def load(asked: _Asked) -> tuple:
            return asked.backend, tuple(asked.config.get(key) for key in load_keys or ())

        return [list(part) for _, part in itertools.groupby(group, key=load)]

    def _shares_loads(self, backend_name: str) -> bool:
        """Whether the backend measures configs that share a model load in one child (``load_keys``)."""
        return self.backends[backend_name].load_keys is not None

    def _measure(self, backend_name: str, configs: list[Config], model_path: Path) -> list[TrialResult]:
        """One backend's configs, in one child per model load where the backend shares loads."""
        backend = self.backends[backend_name]
        if len(configs) == 1:
            return [backend.run_trial(configs[0], model_path, self.workload, self.trial_timeout_s)]
        return backend.run_trials(configs, model_path, self.workload, self.trial_timeout_s)

    def _run_batch(self, model_path: Path, outcome: StudyOutcome, room: int) -> int:
        """Ask, predict, prune or run (with siblings sharing the load), tell. Returns how many ran."""
        lead = self._ask()
        if lead.predicted > self.vram_cap:
            self._prune(lead, outcome)
            return 0
        group = [lead] + self._siblings(lead, min(self.batch, room) - 1, outcome)
        load_keys = self.backends[lead.backend].load_keys
        for part in self._load_groups(group, load_keys):
            self._measure_and_record(part, model_path, outcome)
        self._reseed_outdated_baselines()
        return len(group)

    def _measure_and_record(self, group: list[_Asked], model_path: Path, outcome: StudyOutcome) -> None:
        """Measure trials that share one model load, and tell the study their results."""
        lead = group[0]
        try:
            results = self._measure(lead.backend, [asked.config for asked in group], model_path)
        except KeyboardInterrupt:
            self._give_back(group, Outcome.STOPPED, "stopped by the user")
            raise
        lost = next((result for result in results if result.outcome is Outcome.GPU_LOST), None)
        if lost is not None:
            cause = lost.message.splitlines()[-1]
            self._give_back(group, Outcome.GPU_LOST, cause)
            self.db.set_study_status(self.study_name, "stopped")
            raise AutotuneError(f"the GPU stopped answering during trial {lead.trial.number} ({cause}): the study "
                                "stops; check the GPU (nvidia-smi), then continue it with --resume")
        for asked, result in zip(group, results):
            if result.ok and result.peak_vram_bytes is not None and result.peak_vram_bytes > self.vram_cap:
                result.outcome = Outcome.OVER_CAP
                result.message = f"measured {result.peak_vram_bytes} bytes > cap {self.vram_cap}"
            self._record(asked.trial, asked.backend, asked.raw, asked.predicted, result)
            measurement = objective_of(result, self.workload)
            record = TrialRecord(asked.trial.number, asked.backend, asked.config, result.outcome, asked.predicted,
                                 result, measurement.mean, measurement.std)
            outcome.records.append(record)
            outcome.load_seconds += result.load_seconds
            outcome.trial_seconds += result.wall_seconds + result.load_seconds
            self.on_trial(record)

    def _record(self, trial: optuna.Trial, name: str, raw: int, predicted: int, result: TrialResult) -> None:
        trial.set_user_attr("result", result.to_json())
        trial.set_user_attr("outcome", result.outcome.value)
        if result.peak_vram_bytes:
            trial.set_user_attr("prediction_error", relative_error(predicted, result.peak_vram_bytes))
            if result.ok or result.outcome is Outcome.OVER_CAP:
                self.calibration.add(name, raw, result.peak_vram_bytes)
        trial.set_user_attr("constraint", self._constraint(result, predicted))
        measurement = objective_of(result, self.workload)
        trial.set_user_attr("objective_std", measurement.std)
        self._tell(trial, measurement.mean if result.ok else 0.0)

    def _tell(self, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
        self.study.tell(trial, *args, **kwargs)
        self._heartbeat.discard(trial._trial_id)

    def _give_back(self, group: list[_Asked], outcome: Outcome, cause: str) -> None:
        """Trials cut off by something outside them: failed with the cause, queued again."""
        for asked in group:
            asked.trial.set_user_attr("outcome", outcome.value)
            asked.trial.set_user_attr("message", cause)
            self._tell(asked.trial, state=TrialState.FAIL)
            self.study.enqueue_trial(asked.trial.params, user_attrs={"seeded": f"retry of {outcome.value} {asked.trial.number}"})

    # -- the whole study --------------------------------------------------------

    def measured_trials(self) -> list[FrozenTrial]:
        return [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "warm_start_from" not in t.user_attrs
        ]

    def run(self, model_path: Path, budget: Budget, remeasure: bool = True, conclude: bool = True) -> StudyOutcome:
        """Trials until the budget is spent, then (with ``conclude``) the race and the winner.
        A worker joining a study only adds trials: the ``run`` that owns the study concludes it."""
        outcome = StudyOutcome(self.study_name)
        self._calibrate_from_study()
        started = time.monotonic()
        asked_without_run = 0
        try:
            while not budget.exhausted(measured := len(self.measured_trials()), started, own := _own(outcome)):
                self._check_stop()
                room = budget.room(measured, own, self.batch)
                fail_dead_trials(self.study)  # another worker's, so its trial is run again
                if self._run_batch(model_path, outcome, room):
                    asked_without_run = 0
                else:
                    asked_without_run += 1
                    if asked_without_run >= 200:
                        raise AutotuneError(
                            "the sampler keeps proposing configs predicted over the cap; "
                            "the cap is too small for this model and backend"
                        )
            self._check_stop()  # where other workers spent the budget: a stopped study is not concluded
            if not conclude:
                return outcome
            if remeasure:
                self._remeasure(model_path, outcome)
            else:
                self.study.set_user_attr("finalists", [])
        except (KeyboardInterrupt, StopRequested) as stop:
            outcome.interrupted = True
            outcome.stop_requested = isinstance(stop, StopRequested)
            if conclude:
                self.db.set_study_status(self.study_name, "stopped" if isinstance(stop, StopRequested) else "interrupted")
            return outcome
        outcome.winner = self.choose_winner()
        self.db.set_study_status(self.study_name, "finished")
        return outcome

    def config_groups(self) -> list[list[FrozenTrial]]:
        """Measured ok trials grouped by identical backend and config (their samples pool)."""
        groups: dict[str, list[FrozenTrial]] = {}
        for trial in self.measured_trials():
            if trial.user_attrs.get("outcome") == Outcome.OK.value:
                groups.setdefault(_config_key(trial), []).append(trial)
        return list(groups.values())

    def pooled(self, group: list[FrozenTrial]) -> tuple[Measurement, list[TrialResult]]:
        """All samples of a config within the cap: its trials' and their re-measurements'."""
        results: list[TrialResult] = []
        for trial in group:
            results.append(TrialResult.from_json(trial.user_attrs["result"]))
            results += [TrialResult.from_json(r) for r in self.study.user_attrs.get(f"remeasured:{trial.number}", [])]
        samples: list[float] = []
        for result in results:
            if result.ok and (result.peak_vram_bytes is None or result.peak_vram_bytes <= self.vram_cap):
                samples += objective_of(result, self.workload).samples
        return Measurement.of(samples), results

    def _remeasure(self, model_path: Path, outcome: StudyOutcome) -> None:
        """Race the best few configs: each round measures every finalist still in the race once
        more, in fresh processes and in rotating order (so drift of the machine spreads evenly);
        a round's finalists that share a model load share its child, as trials do (a load can
        cost more than the measurement); finalists the leader stands clear of leave; the race
        ends when one is left."""
        groups = sorted(self.config_groups(), key=lambda g: self.pooled(g)[0].mean, reverse=True)[:REMEASURE_TOP]
        self.study.set_user_attr("finalists", [group[0].number for group in groups])
        racing = list(groups)
        for round_number in range(RACE_ROUNDS):
            if len(racing) < 2:
                break
            shift = round_number % len(racing)
            by_backend: dict[str, list[FrozenTrial]] = {}
            for group in racing[shift:] + racing[:shift]:
                by_backend.setdefault(group[0].user_attrs["backend"], []).append(group[0])
            for backend_name, trials in by_backend.items():
                for batch in [trials] if self._shares_loads(backend_name) else [[trial] for trial in trials]:
                    self._check_stop()
                    self._record_remeasured(batch, self._measure(backend_name, [t.user_attrs["config"] for t in batch],
                                                                 model_path), outcome)
            measured = {id(group): self.pooled(group)[0] for group in racing}
            leader = max(racing, key=lambda g: measured[id(g)].mean)
            racing = [g for g in racing if g is leader or not _stands_clear(measured[id(leader)], measured[id(g)])]

    def _record_remeasured(self, trials: list[FrozenTrial], results: list[TrialResult], outcome: StudyOutcome) -> None:
        for trial, result in zip(trials, results, strict=True):
            # A finished trial cannot be changed, so re-measurements live on the study.
            key = f"remeasured:{trial.number}"
            self.study.set_user_attr(key, self.study.user_attrs.get(key, []) + [result.to_json()])
            outcome.trial_seconds += result.wall_seconds + result.load_seconds
            outcome.load_seconds += result.load_seconds

    def _expected_at_least_as_fast(self, a: FrozenTrial, b: FrozenTrial) -> bool:
        backend = self.backends.get(a.user_attrs["backend"])
        return (backend is not None and a.user_attrs["backend"] == b.user_attrs["backend"]
                and backend.expected_at_least_as_fast(a.user_attrs["config"], b.user_attrs["config"], self.workload))

    def ranked_finalists(self) -> list[BestConfigRow]:
        """The finalists of the race as rows to store, the winner first: the one with the
        highest mean over all its samples (without a race: the config with the highest mean
        less one standard error), unless a finalist the backend expects to be at least as
        fast (``expected_at_least_as_fast``, e.g. fewer experts on the CPU, all else equal)
        is within its spread: then that one. The others follow by that score."""
        finalists = set(self.study.user_attrs.get("finalists", []))
        candidates: list[tuple[float, FrozenTrial, tuple[Measurement, list[TrialResult]]]] = []
        for group in self.config_groups():
            if finalists and group[0].number not in finalists:
                continue
            measurement, results = self.pooled(group)
            if measurement.samples:
                score = measurement.mean if finalists else lower_bound(measurement)
                candidates.append((score, group[0], (measurement, results)))
        if not candidates:
            return []
        candidates.sort(key=lambda c: c[0], reverse=True)
        best = candidates[0]
        preferred = [c for c in candidates if c is not best and self._expected_at_least_as_fast(c[1], best[1])
                     and not _stands_clear(best[2][0], c[2][0])]
        if preferred:
            best = max(preferred, key=lambda c: c[0])
        ranked = [best] + [c for c in candidates if c is not best]
        return [self._row(trial, measurement, results) for _, trial, (measurement, results) in ranked[:REMEASURE_TOP]]

    def _row(self, trial: FrozenTrial, measurement: Measurement, results: list[TrialResult]) -> BestConfigRow:
        peak = max((r.peak_vram_bytes or 0) for r in results if r.ok) or None
        result = results[0]
        result.peak_vram_bytes = peak
        return BestConfigRow(
            model_fingerprint=self.model.fingerprint,
            hardware_fingerprint=self.hardware.fingerprint,
            vram_cap=self.vram_cap,
            workload_key=self.workload.key(),
            backend=trial.user_attrs["backend"],
            config=trial.user_attrs["config"],
            objective_mean=measurement.mean,
            objective_std=measurement.std,
            result=result.to_json() | {"objective_samples": measurement.samples, "trial": trial.number,
                                       "trial_config": trial.user_attrs["config"]},
            study_name=self.study_name,
        )

    def choose_winner(self) -> BestConfigRow | None:
        """The first of ``ranked_finalists``, stored as the best config unless an earlier
        study's winner of another config still stands (a higher mean less one standard error)."""
        ranked = self.ranked_finalists()
        if not ranked:
            return None
        row = ranked[0]
        existing = [
            b for b in self.db.best_configs(self.model.fingerprint, self.hardware.fingerprint, self.vram_cap)
            if b.workload_key == self.workload.key()
        ]
        if existing and trial_config_of(existing[0]) != trial_config_of(row):
            previous = existing[0]
            old = Measurement(previous.objective_mean, previous.objective_std, previous.result.get("objective_samples", []))
            new = Measurement(row.objective_mean, row.objective_std, row.result["objective_samples"])
            if lower_bound(old) >= lower_bound(new):
                return previous  # the earlier winner still stands
        return self.save_winner(row)

    def kept(self, row: BestConfigRow) -> BestConfigRow:
        """``row`` with its config as the backend keeps a winner's (``keep_winner``: e.g. naming
        the placement its trials ran with), once; what a row kept earlier names is restored."""
        if "kept" in row.result:
            self.backends[row.backend].restore_winner(row.config, row.result["kept"])
        else:
            trial_config = trial_config_of(row)
            row.config, kept = self.backends[row.backend].keep_winner(trial_config, self.model, self.study_name)
            row.result = row.result | {"kept": kept, "trial_config": trial_config}
        return row

    def save_winner(self, row: BestConfigRow) -> BestConfigRow:
        """Store ``row``, as kept, as the best config."""
        self.db.save_best(self.kept(row))
        return row


def trial_config_of(row: BestConfigRow) -> Config:
    """The config a winner's trials ran (before ``keep_winner`` made it the stored one)."""
    return row.result.get("trial_config", row.config)


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

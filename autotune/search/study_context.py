"""What every part of the tuner shares: one Optuna study over one database, its backends, the
model, the machine, the cap and the workload, and the memory calibration this machine's
measurements make; with the few rules more than one part follows (the cap constraint, the
budget a budget-filling runtime gets, how configs are measured)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import interrupts
from autotune.backends.base import Backend, Config, TrialResult, Workload
from autotune.hardware import HardwareProfile
from autotune.model_info import ModelProfile
from autotune.search.vram_calibration import MemoryCalibration
from autotune.search.records import TrialRecord, queued_attrs, stop_requested
from autotune.storage import Database

FAILED_CONSTRAINT = 1.0  # constraint value of a trial that produced no measurement


class StopRequested(Exception):
    """A stop asked through the database (the dashboard): taken between trials, like Ctrl-C."""


@dataclass(eq=False)  # one study's context is itself (the Tuner is one), compared by identity
class StudyContext:
    db: Database
    study: optuna.Study
    model: ModelProfile
    hardware: HardwareProfile
    backends: dict[str, Backend]
    vram_cap: int
    workload: Workload
    study_name: str
    trial_timeout_s: float
    calibration: MemoryCalibration

    def check_stop(self) -> None:
        """Raise where Ctrl-C or SIGTERM came (KeyboardInterrupt) or a stop was requested (StopRequested)."""
        interrupts.raise_if_requested()
        if stop_requested(self.study):
            raise StopRequested

    def measured_trials(self) -> list[FrozenTrial]:
        """Complete trials measured by this study (not copied from an earlier one)."""
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if TrialRecord.from_trial(t).measured_here]

    def constraint(self, result: TrialResult, predicted: int) -> float:
        """Peak less the cap (the prediction where nothing was measured); a failure is infeasible."""
        if result.ok:
            peak = result.peak_vram_bytes if result.peak_vram_bytes is not None else predicted
            return float(peak - self.vram_cap)
        return FAILED_CONSTRAINT

    def fills_budget(self, name: str) -> bool:
        """Whether the backend is a runtime that fills the VRAM budget its config names (``fill_cap``)."""
        return self.backends[name].fills_budget

    def budget(self, name: str) -> int:
        """The budget a budget-filling runtime gets: the cap, less what this machine measured
        above its predictions (never more than the cap)."""
        return self.vram_cap - max(0, self.calibration.correction(name))

    def shares_loads(self, name: str) -> bool:
        """Whether the backend measures configs that share a model load in one child (``load_keys``)."""
        return self.backends[name].load_keys is not None

    def enqueue(self, backend: str, config: Config, reason: str, skip_if_exists: bool = True) -> None:
        """Queue a config for a trial, saying why."""
        params = dict(config)
        if len(self.backends) > 1:
            params["backend"] = backend
        self.study.enqueue_trial(params, user_attrs=queued_attrs(reason), skip_if_exists=skip_if_exists)

    def measure(self, backend_name: str, configs: list[Config], model_path: Path) -> list[TrialResult]:
        """One backend's configs, in one child per model load where the backend shares loads."""
        backend = self.backends[backend_name]
        if len(configs) == 1:
            return [backend.run_trial(configs[0], model_path, self.workload, self.trial_timeout_s)]
        return backend.run_trials(configs, model_path, self.workload, self.trial_timeout_s)

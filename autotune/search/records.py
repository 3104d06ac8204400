"""What the tuner stores in Optuna's user attributes, typed: of each trial (``TrialRecord``) and of
the study (its finalists, the finalists' re-measurements, a stop request).

This module is the one place that knows the attribute names; everything else (the tuner, the
dashboard, the studies, the workers) reads and writes through it. The names are those earlier
versions stored, so older databases read the same.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Mapping

import optuna
from optuna.trial import FrozenTrial

from autotune.backends.base import Config, Outcome, TrialResult

_STOP = "stop_requested"
_FINALISTS = "finalists"
_REMEASURED = "remeasured:{number}"


@dataclass
class TrialRecord:
    """One trial: its number, its value, and every attribute the tuner stores for it. An attribute
    left None is not stored (a record written in parts: when asked, sampled, measured)."""

    number: int
    backend: str | None = None
    config: Config | None = None
    outcome: Outcome | None = None  # None while it runs, or where a dead worker's trial was failed before it
    predicted_vram: int | None = None  # the calibrated prediction, bytes
    result: TrialResult | None = None  # what the child measured (samples, peak VRAM, load and wall seconds)
    objective: float = 0.0  # not an attribute: the trial's value, the objective's mean (0 where it failed)
    objective_std: float | None = None  # the spread of those samples
    predicted_vram_raw: int | None = None  # the backend's formula alone
    constraint: float | None = None  # measured peak less the cap (a failure: FAILED_CONSTRAINT); <= 0 is feasible
    prediction_error: float | None = None  # (predicted - measured peak) / measured peak
    message: str | None = None  # why a trial cut off from outside (stop, lost GPU) failed
    seeded: str | None = None  # why the tuner queued it (a baseline, an earlier winner, a sibling of a load)
    warm_start_from: str | None = None  # the earlier study it was copied from (not measured in this one)
    worker: dict[str, Any] | None = None  # the process that runs it (autotune.search.liveness.identity)

    @classmethod
    def from_attrs(cls, number: int, attrs: Mapping[str, Any], value: float | None = None) -> "TrialRecord":
        """The record of trial ``number`` from its user attributes (and value, where it has one)."""
        stored = {f.name: copy.deepcopy(attrs[f.name]) for f in fields(cls)
                  if f.name in attrs and f.name not in _NOT_STORED}
        if "outcome" in stored:
            stored["outcome"] = Outcome(stored["outcome"])
        if "result" in stored:
            stored["result"] = TrialResult.from_json(stored["result"])
        return cls(number, objective=value if value is not None else 0.0, **stored)

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> "TrialRecord":
        return cls.from_attrs(trial.number, trial.user_attrs, trial.value)

    def to_user_attrs(self) -> dict[str, Any]:
        """The attributes that are set, as Optuna stores them (JSON)."""
        attrs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_STORED or value is None:
                continue
            if isinstance(value, Outcome):
                value = value.value
            elif isinstance(value, TrialResult):
                value = value.to_json()
            attrs[f.name] = value
        return attrs

    def save(self, trial: optuna.Trial) -> None:
        """Store the attributes that are set on a running trial (the others are left as they are)."""
        for key, value in self.to_user_attrs().items():
            trial.set_user_attr(key, value)

    @property
    def measured_here(self) -> bool:
        """Measured by this study, not copied from an earlier one."""
        return self.warm_start_from is None


def queued_attrs(reason: str) -> dict[str, Any]:
    """The user attributes of a trial the tuner queues (``study.enqueue_trial``)."""
    return {"seeded": reason}


_NOT_STORED = frozenset({"number", "objective"})


# -- the study's own attributes ----------------------------------------------------------------

def request_stop(study: optuna.Study) -> None:
    """Ask every process running this study to stop once its running trials are recorded."""
    study.set_user_attr(_STOP, True)


def stop_requested(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(_STOP))


def clear_stop(study: optuna.Study) -> None:
    """Forget a stop request (a study started or resumed runs until it is stopped anew)."""
    if stop_requested(study):
        study.set_user_attr(_STOP, False)


def finalists(study: optuna.Study) -> list[int]:
    """The trial numbers that lead the race's config groups (empty: no race was run)."""
    return list(study.user_attrs.get(_FINALISTS, []))


def set_finalists(study: optuna.Study, numbers: list[int]) -> None:
    study.set_user_attr(_FINALISTS, numbers)


def remeasured(study: optuna.Study, number: int) -> list[TrialResult]:
    """The race's re-measurements of trial ``number`` (a finished trial cannot change, so they live on the study)."""
    return [TrialResult.from_json(r) for r in study.user_attrs.get(_REMEASURED.format(number=number), [])]


def add_remeasured(study: optuna.Study, number: int, result: TrialResult) -> None:
    key = _REMEASURED.format(number=number)
    study.set_user_attr(key, study.user_attrs.get(key, []) + [result.to_json()])

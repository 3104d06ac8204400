"""Pooling a config's samples: every trial that measured it, and the race's re-measurements of
them, each from a fresh process; only results within the cap count."""

from __future__ import annotations

import json
from typing import Iterable

import optuna
from optuna.trial import FrozenTrial

from autotune.backends.base import Measurement, Outcome, TrialResult, Workload
from autotune.search.objective import objective_of
from autotune.search.records import TrialRecord, remeasured


def config_key(record: TrialRecord) -> str:
    """Identical backend and config give one key."""
    return json.dumps([record.backend, record.config], sort_keys=True)


def config_groups(trials: Iterable[FrozenTrial]) -> list[list[FrozenTrial]]:
    """The ok trials grouped by identical backend and config (their samples pool), in first-seen order."""
    groups: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        if record.outcome is Outcome.OK:
            groups.setdefault(config_key(record), []).append(trial)
    return list(groups.values())


def results_of(study: optuna.Study, trials: Iterable[FrozenTrial]) -> list[TrialResult]:
    """Each trial's result followed by the race's re-measurements of it."""
    results: list[TrialResult] = []
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        if record.result is not None:
            results.append(record.result)
        results += remeasured(study, trial.number)
    return results


def within_cap(results: Iterable[TrialResult], vram_cap: int) -> list[TrialResult]:
    """The ok results whose measured peak (where there is one) is within the cap."""
    return [r for r in results if r.ok and (r.peak_vram_bytes is None or r.peak_vram_bytes <= vram_cap)]


def pooled(results: Iterable[TrialResult], workload: Workload, vram_cap: int) -> Measurement:
    """The objective over every sample of the results within the cap."""
    return Measurement.of([s for r in within_cap(results, vram_cap) for s in objective_of(r, workload).samples])

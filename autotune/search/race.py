"""The finalists' race at the end of a study: the best few configs are measured again in
rotating rounds until the leader stands clear of the others by its spread (or the rounds run
out), then ranked, the winner first: the finalist with the highest mean over all its samples."""

from __future__ import annotations

import math
from pathlib import Path

from optuna.trial import FrozenTrial

from autotune.backends.base import Measurement, TrialResult
from autotune.search.objective import lower_bound
from autotune.search.pooling import config_groups, pooled, results_of
from autotune.search.records import TrialRecord, add_remeasured, finalists, set_finalists
from autotune.search.study_context import StudyContext
from autotune.search.study_outcome import StudyOutcome
from autotune.storage import BestConfigRow

REMEASURE_TOP = 3  # finalists of the race at the end
RACE_ROUNDS = 3  # at most this many re-measurements of each finalist


def _standard_error(measurement: Measurement) -> float:
    return measurement.std / math.sqrt(len(measurement.samples)) if measurement.samples else math.inf


def stands_clear(leader: Measurement, other: Measurement) -> bool:
    """The leader's mean less its standard error is above the other's mean plus its own."""
    return leader.mean - _standard_error(leader) > other.mean + _standard_error(other)


class Race:
    """The race over one study's measured configs, and its ranking."""

    def __init__(self, context: StudyContext):
        self.context = context

    def config_groups(self) -> list[list[FrozenTrial]]:
        """Measured ok trials grouped by identical backend and config (their samples pool)."""
        return config_groups(self.context.measured_trials())

    def pooled(self, group: list[FrozenTrial]) -> tuple[Measurement, list[TrialResult]]:
        """All samples of a config within the cap (its trials' and their re-measurements'), and
        all its results."""
        results = results_of(self.context.study, group)
        return pooled(results, self.context.workload, self.context.vram_cap), results

    def skip(self) -> None:
        """No race: the ranking is by each config's mean less one standard error."""
        set_finalists(self.context.study, [])

    def run(self, model_path: Path, outcome: StudyOutcome) -> None:
        """Race the best few configs: each round measures every finalist still in the race once
        more, in fresh processes and in rotating order (so drift of the machine spreads evenly);
        a round's finalists that share a model load share its child, as trials do (a load can
        cost more than the measurement); finalists the leader stands clear of leave; the race
        ends when one is left."""
        context = self.context
        groups = sorted(self.config_groups(), key=lambda g: self.pooled(g)[0].mean, reverse=True)[:REMEASURE_TOP]
        set_finalists(context.study, [group[0].number for group in groups])
        racing = list(groups)
        for round_number in range(RACE_ROUNDS):
            if len(racing) < 2:
                break
            shift = round_number % len(racing)
            by_backend: dict[str, list[tuple[FrozenTrial, TrialRecord]]] = {}
            for group in racing[shift:] + racing[:shift]:
                record = TrialRecord.from_trial(group[0])
                by_backend.setdefault(record.backend, []).append((group[0], record))
            for backend_name, leads in by_backend.items():
                for batch in [leads] if context.shares_loads(backend_name) else [[lead] for lead in leads]:
                    context.check_stop()
                    results = context.measure(backend_name, [record.config for _, record in batch],
                                              model_path)
                    self._record(batch, results, outcome)
            measured = {id(group): self.pooled(group)[0] for group in racing}
            leader = max(racing, key=lambda g: measured[id(g)].mean)
            racing = [g for g in racing if g is leader or not stands_clear(measured[id(leader)], measured[id(g)])]

    def _record(self, batch: list[tuple[FrozenTrial, TrialRecord]], results: list[TrialResult],
                outcome: StudyOutcome) -> None:
        for (trial, _), result in zip(batch, results, strict=True):
            add_remeasured(self.context.study, trial.number, result)
            outcome.trial_seconds += result.wall_seconds + result.load_seconds
            outcome.load_seconds += result.load_seconds

    def _expected_at_least_as_fast(self, a: TrialRecord, b: TrialRecord) -> bool:
        backend = self.context.backends.get(a.backend)
        return (backend is not None and a.backend == b.backend
                and backend.expected_at_least_as_fast(a.config, b.config, self.context.workload))

    def ranked_finalists(self) -> list[BestConfigRow]:
        """The finalists of the race as rows to store, the winner first: the one with the
        highest mean over all its samples (without a race: the config with the highest mean
        less one standard error), unless a finalist the backend expects to be at least as
        fast (``expected_at_least_as_fast``, e.g. fewer experts on the CPU, all else equal)
        is within its spread: then that one. The others follow by that score."""
        raced = set(finalists(self.context.study))
        candidates: list[tuple[float, TrialRecord, tuple[Measurement, list[TrialResult]]]] = []
        for group in self.config_groups():
            if raced and group[0].number not in raced:
                continue
            measurement, results = self.pooled(group)
            if measurement.samples:
                score = measurement.mean if raced else lower_bound(measurement)
                candidates.append((score, TrialRecord.from_trial(group[0]), (measurement, results)))
        if not candidates:
            return []
        candidates.sort(key=lambda c: c[0], reverse=True)
        best = candidates[0]
        preferred = [c for c in candidates if c is not best and self._expected_at_least_as_fast(c[1], best[1])
                     and not stands_clear(best[2][0], c[2][0])]
        if preferred:
            best = max(preferred, key=lambda c: c[0])
        ranked = [best] + [c for c in candidates if c is not best]
        return [self._row(record, measurement, results) for _, record, (measurement, results) in ranked[:REMEASURE_TOP]]

    def _row(self, record: TrialRecord, measurement: Measurement, results: list[TrialResult]) -> BestConfigRow:
        context = self.context
        peak = max((r.peak_vram_bytes or 0) for r in results if r.ok) or None
        result = results[0]
        result.peak_vram_bytes = peak
        return BestConfigRow(
            model_fingerprint=context.model.fingerprint,
            hardware_fingerprint=context.hardware.fingerprint,
            vram_cap=context.vram_cap,
            workload_key=context.workload.key(),
            backend=record.backend,
            config=record.config,
            objective_mean=measurement.mean,
            objective_std=measurement.std,
            result=result.to_json() | {"objective_samples": measurement.samples, "trial": record.number,
                                       "trial_config": record.config, "workload": context.workload.record()},
            study_name=context.study_name,
        )

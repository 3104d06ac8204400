"""What earlier studies on the same model, machine and workload left: their measured trials,
copied into a new study (the sampler starts from them), and their winners, queued to be
measured again on today's machine."""

from __future__ import annotations

from typing import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.search.records import TrialRecord
from autotune.search.study_context import StudyContext


def _earlier_trials(context: StudyContext) -> Iterable[tuple[str, FrozenTrial, TrialRecord]]:
    """Measured trials of earlier studies on the same model, machine and workload (with the study
    each was measured by)."""
    for row in context.db.studies(context.model.fingerprint, context.hardware.fingerprint):
        if row.name == context.study_name or row.workload_key != context.workload.key():
            continue
        try:
            earlier = optuna.load_study(study_name=row.name, storage=context.study._storage)
        except KeyError:
            continue
        for trial in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = TrialRecord.from_trial(trial)
            if (record.backend in context.backends and record.measured_here and record.result is not None
                    and record.predicted_vram is not None):
                yield row.name, trial, record


def warm_start(context: StudyContext) -> int:
    """Copy earlier measurements into this study and try the earlier winners first.

    Constraints are recomputed against this study's cap. Returns the trials copied.
    """
    if context.study.trials:
        return 0  # resuming: the study already holds what it needs
    copied = 0
    for source, trial, record in _earlier_trials(context):
        record.warm_start_from = source
        record.constraint = context.constraint(record.result, record.predicted_vram)
        if record.result.ok and record.result.peak_vram_bytes and record.predicted_vram_raw is not None:
            context.calibration.add(record.backend, record.predicted_vram_raw, record.result.peak_vram_bytes)
        context.study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=trial.value,
                user_attrs=record.to_user_attrs(),
            )
        )
        copied += 1
    for best in context.db.best_configs(context.model.fingerprint, context.hardware.fingerprint):
        if (best.workload_key == context.workload.key() and best.backend in context.backends
                and best.vram_cap <= context.vram_cap):
            # measured again even though a copy exists: the winner is checked on today's machine
            context.enqueue(best.backend, best.config, reason=f"best of {best.study_name}", skip_if_exists=False)
    return copied

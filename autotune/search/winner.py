"""The winner of a study, stored as the best config for model x machine x cap x workload,
unless an earlier study's winner of another config still stands."""

from __future__ import annotations

from autotune.backends.base import Config, Measurement
from autotune.search.objective import lower_bound
from autotune.search.study_context import StudyContext
from autotune.storage import BestConfigRow


def trial_config_of(row: BestConfigRow) -> Config:
    """The config a winner's trials ran (before ``keep_winner`` made it the stored one)."""
    return row.result.get("trial_config", row.config)


def kept(context: StudyContext, row: BestConfigRow) -> BestConfigRow:
    """``row`` with its config as the backend keeps a winner's (``keep_winner``: e.g. naming
    the placement its trials ran with), once; what a row kept earlier names is restored."""
    if "kept" in row.result:
        context.backends[row.backend].restore_winner(row.config, row.result["kept"])
    else:
        trial_config = trial_config_of(row)
        row.config, beside = context.backends[row.backend].keep_winner(trial_config, context.model,
                                                                          context.study_name)
        row.result = row.result | {"kept": beside, "trial_config": trial_config}
    return row


def save_winner(context: StudyContext, row: BestConfigRow) -> BestConfigRow:
    """Store ``row``, as kept, as the best config."""
    context.db.save_best(kept(context, row))
    return row


def choose_winner(context: StudyContext, ranked: list[BestConfigRow]) -> BestConfigRow | None:
    """The first of ``ranked``, stored as the best config unless an earlier study's winner of
    another config still stands (a higher mean less one standard error)."""
    if not ranked:
        return None
    row = ranked[0]
    existing = [
        b for b in context.db.best_configs(context.model.fingerprint, context.hardware.fingerprint, context.vram_cap)
        if b.workload_key == context.workload.key()
    ]
    if existing and trial_config_of(existing[0]) != trial_config_of(row):
        previous = existing[0]
        old = Measurement(previous.objective_mean, previous.objective_std, previous.result.get("objective_samples", []))
        new = Measurement(row.objective_mean, row.objective_std, row.result["objective_samples"])
        if lower_bound(old) >= lower_bound(new):
            return previous  # the earlier winner still stands
    return save_winner(context, row)

"""What one process's run of a study did: its trials, the winner, the time spent."""

from __future__ import annotations

from dataclasses import dataclass, field

from autotune.backends.base import Outcome
from autotune.search.records import TrialRecord
from autotune.storage import BestConfigRow


@dataclass
class StudyOutcome:
    study_name: str
    records: list[TrialRecord] = field(default_factory=list)
    winner: BestConfigRow | None = None
    load_seconds: float = 0.0
    trial_seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C, SIGTERM or a stop request ended it before its budget
    stop_requested: bool = False  # by a stop request (the dashboard's x), not a signal

    def own_trials(self) -> int:
        """Trials this process measured (pruned ones were never run)."""
        return sum(record.outcome is not Outcome.PRUNED for record in self.records)

"""Optuna's parameter importances, once enough trials are complete."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from autotune.tui.study_view import MIN_IMPORTANCE_TRIALS, StudySnapshot

BAR_WIDTH = 16


class Importances(Static):
    """One bar per knob, largest first."""

    def show(self, snapshot: StudySnapshot) -> None:
        if not snapshot.importances:
            self.update(Text(f"after {MIN_IMPORTANCE_TRIALS} complete trials ({snapshot.complete_trials} so far)",
                             style="dim"))
            return
        table = Table.grid(padding=(0, 1))
        for name, score in snapshot.importances:
            table.add_row(name, Text("█" * max(1, round(score * BAR_WIDTH)), style="magenta"), f"{score:.2f}")
        self.update(table)

"""The best trial so far (the stored winner once the study has one) and its launch command."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from autotune.backends.base import Measurement
from autotune.served import ServedFigures
from autotune.tui.study_view import StudySnapshot


class BestPanel(Static):
    """Objective with spread, backend, and the command that runs the model so (it names every knob)."""

    def show(self, snapshot: StudySnapshot, command: str | None) -> None:
        best = snapshot.best
        self.border_title = "winner" if snapshot.winner is not None else "best so far"
        if best is None:
            self.update(Text("no trial has succeeded yet", style="dim"))
            return
        measurement = snapshot.winner_objective or Measurement(best.objective or 0.0, best.objective_std or 0.0)
        text = Text()
        text.append(f"#{best.number} ", style="bold")
        text.append(f"{measurement} {snapshot.unit}", style="bold green")
        text.append(f" {snapshot.objective} · {best.backend}")
        served = snapshot.winner_served
        if served:
            text.append(f"\nserved: {ServedFigures.summary(served)}", style="bold")
        if command:
            text.append("\n" + command, style="cyan")
        self.update(text)

"""The objective of each measured trial in trial order, and the best so far after each (Sparklines)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline

from autotune.tui.study_view import StudySnapshot


def series(snapshot: StudySnapshot) -> tuple[list[int], list[float], list[float]]:
    """Trial numbers, their objective (0 for a failure), and the best so far after each."""
    numbers: list[int] = []
    values: list[float] = []
    best: list[float] = []
    for row in sorted(snapshot.measured, key=lambda r: r.number):
        value = row.objective if row.ok and row.objective is not None else 0.0
        numbers.append(row.number)
        values.append(value)
        best.append(max(value, best[-1]) if best else value)
    return numbers, values, best


class TpsChart(Vertical):
    """A sparkline of the trials over one of the best so far, and the range they span."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="spark-trials-line"):
            yield Label("trial", classes="spark-label")
            yield Sparkline([], id="spark-trials")
        with Horizontal(id="spark-best-line"):
            yield Label("best", classes="spark-label")
            yield Sparkline([], id="spark-best")
        yield Label("", id="spark-axis")

    def show(self, snapshot: StudySnapshot) -> None:
        numbers, values, best = series(snapshot)
        self.border_title = f"{snapshot.objective} {snapshot.unit} by trial"
        self.query_one("#spark-trials", Sparkline).data = values
        self.query_one("#spark-best", Sparkline).data = best
        axis = self.query_one("#spark-axis", Label)
        if not numbers:
            axis.update("no trial measured yet")
            return
        top = max(values)
        axis.update(f"#{numbers[0]} → #{numbers[-1]} · max {top:.1f}, min {min(values):.1f} {snapshot.unit}")

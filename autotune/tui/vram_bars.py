"""Predicted and measured VRAM of the selected trial against the cap."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

from autotune.tui.study_view import TrialRow
from autotune.units import format_size


class VramBars(Vertical):
    """Two bars out of the cap: the memory model's prediction and the measured peak."""

    def compose(self) -> ComposeResult:
        for kind in ("predicted", "peak"):
            with Horizontal(classes="vram-line"):
                yield Label(kind[:4], classes="vram-kind")
                yield ProgressBar(total=1, show_eta=False, show_percentage=False, id=f"vram-{kind}")
                yield Label("", id=f"vram-{kind}-value", classes="vram-value")
        yield Label("", id="vram-cap")

    def show(self, row: TrialRow | None, cap: int) -> None:
        self.border_title = f"VRAM of trial #{row.number}" if row else "VRAM"
        used = row.vram if row else None
        room = f" · {format_size(cap - used)} left" if used is not None and used <= cap else " · over the cap" if used else ""
        self.query_one("#vram-cap", Label).update(f"cap {format_size(cap)}{room}")
        for kind, value in (("predicted", row.predicted_vram if row else None), ("peak", row.peak_vram if row else None)):
            bar = self.query_one(f"#vram-{kind}", ProgressBar)
            bar.update(total=cap, progress=min(value or 0, cap))
            bar.set_class(value is not None and value > cap, "over-cap")
            self.query_one(f"#vram-{kind}-value", Label).update(format_size(value) if value is not None else "n/a")

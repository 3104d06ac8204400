"""Progress of the study against its trial budget, the ETA, and where it stands."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from autotune.tui.study_view import RUNNING, StudySnapshot


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def summary(snapshot: StudySnapshot) -> str:
    """E.g. ``study · 6/8 measured · 2 pruned · 1 failed · running · ETA 40s``."""
    measured = len(snapshot.measured)
    budget = f"/{snapshot.trials_budget}" if snapshot.trials_budget is not None else ""
    parts = [snapshot.name, f"{measured}{budget} measured"]
    pruned = sum(row.outcome == "pruned" for row in snapshot.rows)
    failed = sum(row.failed for row in snapshot.rows if not row.warm_start_from)
    parts += [f"{pruned} pruned"] * bool(pruned) + [f"{failed} failed"] * bool(failed)
    if snapshot.seconds_budget is not None:
        parts.append(f"time budget {_duration(snapshot.seconds_budget)}")
    if snapshot.status == "running":
        running = sum(row.outcome == RUNNING for row in snapshot.rows)
        parts.append(f"{running} running" if running else "running")
        if snapshot.eta_seconds is not None:
            parts.append(f"ETA {_duration(snapshot.eta_seconds)}")
        if snapshot.stop_requested:
            parts.append("stop requested")
    else:
        parts.append(snapshot.status)
    return " · ".join(parts)


class ProgressLine(Horizontal):
    """A bar of measured trials out of the budget, then the summary."""

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False, show_percentage=False, id="study-progress")
        yield Label("", id="study-summary")

    def show(self, snapshot: StudySnapshot) -> None:
        bar = self.query_one(ProgressBar)
        done = snapshot.status != "running"
        total = snapshot.trials_budget if snapshot.trials_budget else None
        bar.update(total=1 if done and total is None else total,
                   progress=1 if done and total is None else len(snapshot.measured))
        self.query_one("#study-summary", Label).update(summary(snapshot))

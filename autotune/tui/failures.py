"""Failed trials with their messages, each written once."""

from __future__ import annotations

from textual.widgets import Log

from autotune.tui.study_view import StudySnapshot


class FailureLog(Log):
    """A line per failed trial: number, outcome, the last line of its message (its knobs are in the table)."""

    def __init__(self, **kwargs):
        super().__init__(max_lines=1000, **kwargs)
        self._written: set[int] = set()

    def show(self, snapshot: StudySnapshot) -> None:
        for row in sorted(snapshot.rows, key=lambda r: r.number):
            if row.failed and row.number not in self._written:
                self._written.add(row.number)
                last = row.message.splitlines()[-1] if row.message else "(no message)"
                self.write_line(f"#{row.number} {row.outcome}: {last}")

    @property
    def count(self) -> int:
        return len(self._written)

"""The trials table: one row per trial, the knobs that differ as columns, sortable and filterable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable

from autotune.backends.base import Measurement
from autotune.tui.study_view import RUNNING, StudySnapshot, TrialRow

OUTCOME_FILTERS = ("ok", "failed", "pruned", RUNNING)
SORT_CYCLE = ("number", "objective", "decode", "prefill", "vram", "outcome")
DESCENDING_FIRST = {"objective", "decode", "prefill"}  # fastest first
OUTCOME_STYLE = {"ok": "green", "pruned": "yellow", RUNNING: "cyan"}


def _ordered(value: Any) -> tuple[int, Any]:
    """Numbers (and booleans) before text, so a knob column of mixed values still sorts."""
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def sort_value(row: TrialRow, key: str) -> Any:
    if key.startswith("knob:"):
        return row.config.get(key[5:])
    return {
        "number": row.number,
        "backend": row.backend,
        "objective": row.objective,
        "decode": row.decode.mean if row.decode else None,
        "prefill": row.prefill.mean if row.prefill else None,
        "vram": row.vram,
        "predicted": row.predicted_vram,
        "peak": row.peak_vram,
        "outcome": row.outcome,
    }[key]


def matches(row: TrialRow, backend: str | None, outcome: str | None) -> bool:
    if backend is not None and row.backend != backend:
        return False
    if outcome == "failed":
        return row.failed
    return outcome is None or row.outcome == outcome


def arrange(rows: tuple[TrialRow, ...], sort: str, reverse: bool, backend: str | None, outcome: str | None) -> list[TrialRow]:
    """The rows to show, in order: filtered by backend and outcome, sorted (ties by trial number),
    rows without the value (a failed trial's speed) last in either direction."""
    shown = [row for row in rows if matches(row, backend, outcome)]
    present = sorted((r for r in shown if sort_value(r, sort) is not None), key=lambda r: r.number)
    missing = [r for r in shown if sort_value(r, sort) is None]
    present.sort(key=lambda r: _ordered(sort_value(r, sort)), reverse=reverse)
    return present + sorted(missing, key=lambda r: r.number)


def _cycle(options: tuple[Any, ...], current: Any) -> Any:
    return options[(options.index(current) + 1) % len(options)] if current in options else options[0]


def _speed(measurement: Measurement | None) -> str:
    return f"{measurement.mean:.1f}±{measurement.std:.1f}" if measurement and measurement.samples else ""


def _gib(n: int | None, cap: int) -> Text:
    """GiB with two decimals, red over the cap."""
    if n is None:
        return Text("")
    return Text(f"{n / 2**30:.2f}", style="bold red" if n > cap else "", justify="right")


def _knob(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[TrialRow, StudySnapshot], Any]


def columns_of(snapshot: StudySnapshot) -> list[Column]:
    """#, outcome, backend, the knobs that differ, the speeds, predicted and measured VRAM."""
    columns = [Column("number", "#", lambda r, s: Text(str(r.number), style="bold" if r is s.best else "")),
               Column("outcome", "outcome", _outcome_cell),
               Column("backend", "backend", lambda r, s: r.backend)]
    for knob in snapshot.varying_knobs:
        columns.append(Column(f"knob:{knob}", knob, lambda r, s, k=knob: _knob(r.config.get(k))))
    columns += [Column("decode", "decode t/s", lambda r, s: _speed(r.decode)),
                Column("prefill", "prefill t/s", lambda r, s: _speed(r.prefill))]
    if snapshot.objective not in ("decode", "prefill"):
        columns.append(Column("objective", snapshot.unit, lambda r, s: "" if r.objective is None else
                              f"{r.objective:.2f}±{r.objective_std or 0:.2f}"))
    columns += [Column("predicted", "pred GiB", lambda r, s: _gib(r.predicted_vram, s.vram_cap)),
                Column("peak", "peak GiB", lambda r, s: _gib(r.peak_vram, s.vram_cap))]
    return columns


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _outcome_cell(row: TrialRow, snapshot: StudySnapshot) -> Text:
    label = row.outcome + (" (warm)" if row.warm_start_from else "") + (" ★" if row is snapshot.best else "")
    return Text(label, style=OUTCOME_STYLE.get(row.outcome, "red"))


class TrialsTable(DataTable):
    """Trials of the study; the cursor row is the selected trial."""

    def __init__(self, **kwargs: Any):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.snapshot: StudySnapshot | None = None
        self.sort = "number"
        self.reverse = False
        self.backend_filter: str | None = None
        self.outcome_filter: str | None = None
        self._columns: list[tuple[str, int]] = []  # (key, width) of the columns shown
        self._shown: list[TrialRow] = []

    @property
    def shown(self) -> list[TrialRow]:
        """The rows on screen, in screen order."""
        return list(self._shown)

    @property
    def selected(self) -> TrialRow | None:
        if not self._shown or not self.is_valid_row_index(self.cursor_row):
            return None
        return self._shown[self.cursor_row]

    def show(self, snapshot: StudySnapshot) -> None:
        self.snapshot = snapshot
        self._render_rows()

    def _render_rows(self) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        selected = self.selected.number if self.selected else None
        columns = columns_of(snapshot)
        self._shown = arrange(snapshot.rows, self.sort, self.reverse, self.backend_filter, self.outcome_filter)
        cells = [[column.cell(row, snapshot) for column in columns] for row in self._shown]
        # widths from the content itself: DataTable's own measuring lags behind rows added in bulk
        layout = [(column.key, max([cell_len(column.label)] + [_width(r[i]) for r in cells]))
                  for i, column in enumerate(columns)]
        if layout != self._columns:
            self.clear(columns=True)
            for column, (_, width) in zip(columns, layout):
                self.add_column(column.label, key=column.key, width=width)
            self._columns = layout
        else:
            self.clear()
        for row, row_cells in zip(self._shown, cells):
            self.add_row(*row_cells, key=str(row.number))
        if selected is not None and any(row.number == selected for row in self._shown):
            self.move_cursor(row=self.get_row_index(str(selected)), animate=False)
        self.border_title = self.describe()

    def describe(self) -> str:
        arrow = "↓" if self.reverse else "↑"
        parts = [f"trials {len(self._shown)}/{len(self.snapshot.rows) if self.snapshot else 0}",
                 f"sort {self.sort.removeprefix('knob:')} {arrow}"]
        if self.backend_filter:
            parts.append(f"backend {self.backend_filter}")
        if self.outcome_filter:
            parts.append(f"outcome {self.outcome_filter}")
        return " · ".join(parts)

    def sort_by(self, key: str) -> None:
        """Sort by a column; the same column again turns the order round."""
        if key == self.sort:
            self.reverse = not self.reverse
        else:
            self.sort, self.reverse = key, key in DESCENDING_FIRST
        self._render_rows()

    def cycle_sort(self) -> None:
        key = _cycle(SORT_CYCLE, self.sort)
        self.sort, self.reverse = key, key in DESCENDING_FIRST
        self._render_rows()

    def cycle_backend(self) -> None:
        names = tuple(sorted({row.backend for row in self.snapshot.rows})) if self.snapshot else ()
        self.backend_filter = _cycle((None, *names), self.backend_filter)
        self._render_rows()

    def cycle_outcome(self) -> None:
        self.outcome_filter = _cycle((None, *OUTCOME_FILTERS), self.outcome_filter)
        self._render_rows()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

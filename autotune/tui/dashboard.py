"""The dashboard: one study, read from the database every poll, steered with a few keys.

It watches a study run by another process (``autotune dashboard``) or runs one itself in a
worker thread (``autotune run --tui``); either way the screen is drawn from the database.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from autotune.errors import AutotuneError
from autotune.tui.best_panel import BestPanel
from autotune.tui.failures import FailureLog
from autotune.tui.importances import Importances
from autotune.tui.progress_line import ProgressLine
from autotune.tui.study_view import StudySnapshot, StudyView, TrialRow
from autotune.tui.tps_chart import TpsChart
from autotune.tui.trials_table import TrialsTable
from autotune.tui.vram_bars import VramBars

POLL_S = 1.0
STUDY_WORKER = "study"


class DashboardApp(App[None]):
    """Trials, best so far, tok/s chart, VRAM, progress, importances and failures of one study."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "autotune"
    BINDINGS = [
        Binding("s", "sort", "sort"),
        Binding("r", "reverse", "reverse", show=False),
        Binding("b", "filter_backend", "backend"),
        Binding("o", "filter_outcome", "outcome"),
        Binding("c", "copy_command", "copy"),
        Binding("w", "write_command", "write"),
        Binding("x", "stop", "stop"),
        Binding("ctrl+c", "interrupt", "stop", show=False, priority=True),
        Binding("q", "quit", "quit"),
    ]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, view: StudyView, poll_s: float = POLL_S, study: Callable[[], Any] | None = None,
                 out_dir: Path | None = None):
        """``study``, where given, runs the study (in a worker thread) and returns its outcome."""
        super().__init__()
        self.view = view
        self.poll_s = poll_s
        self.out_dir = out_dir or Path.cwd()
        self.snapshot: StudySnapshot | None = None
        self.polls = 0  # snapshots shown so far
        self.outcome: Any = None  # what ``study`` returned
        self.study_error: BaseException | None = None
        self._study = study
        self._polling = False
        self._quit_when_done = False

    def compose(self) -> ComposeResult:
        yield ProgressLine(id="progress")
        yield TrialsTable(id="trials")
        with Horizontal(id="middle"):
            yield BestPanel(id="best")
            yield VramBars(id="vram")
        with Horizontal(id="bottom"):
            yield TpsChart(id="chart")
            with TabbedContent(id="tabs"):
                with TabPane("failures", id="failures-tab"):
                    yield FailureLog(id="failures")
                with TabPane("importance", id="importance-tab"):
                    yield Importances(id="importances")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"autotune · {self.view.name}"
        self.query_one(TrialsTable).focus()
        self.poll()
        self.set_interval(self.poll_s, self.poll)
        if self._study is not None:
            self.run_worker(self._study, name=STUDY_WORKER, thread=True, exit_on_error=False)
            # SIGTERM, which stops ``autotune run`` as Ctrl-C does, stops the study here as q does
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: self.call_next(self.action_quit))

    # -- reading the database ---------------------------------------------------

    def poll(self) -> None:
        """Read the study again (in a thread: a slow database never blocks the screen)."""
        if not self._polling:
            self._polling = True
            self.run_worker(self._read, name="poll", thread=True, exit_on_error=False)

    def _read(self) -> None:
        try:
            snapshot = self.view.snapshot()
        except Exception as exc:  # a database error or a malformed stored trial: shown, and read again next poll
            self.call_from_thread(self._read_failed, exc)
            return
        self.call_from_thread(self.show, snapshot)

    def _read_failed(self, exc: Exception) -> None:
        self._polling = False
        self.notify(f"cannot read the study: {str(exc).splitlines()[0]}", severity="error")

    def show(self, snapshot: StudySnapshot) -> None:
        self._polling = False
        self.snapshot = snapshot
        if not self.query(TrialsTable):
            return  # the app is closing and its widgets are gone
        self.sub_title = snapshot.status
        table = self.query_one(TrialsTable)
        table.show(snapshot)
        self.query_one(ProgressLine).show(snapshot)
        best = snapshot.best
        command = snapshot.winner_command or (self._command_or_reason(best) if best else None)
        self.query_one(BestPanel).show(snapshot, command)
        self._show_vram(table.selected)
        self.query_one(TpsChart).show(snapshot)
        self.query_one(Importances).show(snapshot)
        failures = self.query_one(FailureLog)
        failures.show(snapshot)
        self.query_one(TabbedContent).get_tab("failures-tab").label = f"failures ({failures.count})"
        self.polls += 1

    def _show_vram(self, row: TrialRow | None) -> None:
        bars = self.query(VramBars)
        if self.snapshot is not None and bars:
            bars.first().show(row or self.snapshot.best, self.snapshot.vram_cap)

    def _command_or_reason(self, row: TrialRow) -> str:
        try:
            return self.view.command(row)
        except AutotuneError as exc:
            return str(exc)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if isinstance(event.data_table, TrialsTable):
            self._show_vram(event.data_table.selected)

    # -- the study run here -----------------------------------------------------

    @property
    def study_running(self) -> bool:
        return any(w.name == STUDY_WORKER and w.is_running for w in self.workers)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != STUDY_WORKER or not event.worker.is_finished:
            return
        if event.state is WorkerState.ERROR:
            self.study_error = event.worker.error
            self.exit()
            return
        self.outcome = event.worker.result
        self.poll()
        if self._quit_when_done:
            self.exit()
        else:
            self.notify("the study has ended; press q to leave", timeout=10)

    # -- actions ----------------------------------------------------------------

    def action_sort(self) -> None:
        self.query_one(TrialsTable).cycle_sort()

    def action_reverse(self) -> None:
        table = self.query_one(TrialsTable)
        table.sort_by(table.sort)

    def action_filter_backend(self) -> None:
        self.query_one(TrialsTable).cycle_backend()

    def action_filter_outcome(self) -> None:
        self.query_one(TrialsTable).cycle_outcome()

    def _chosen(self) -> TrialRow | None:
        row = self.query_one(TrialsTable).selected or (self.snapshot.best if self.snapshot else None)
        if row is None:
            self.notify("no trial selected", severity="warning")
        return row

    def action_copy_command(self) -> None:
        row = self._chosen()
        if row is not None:
            try:
                command = self.view.command(row)
            except AutotuneError as exc:
                self.notify(str(exc), severity="error")
                return
            self.copy_to_clipboard(command)
            self.notify(f"copied the launch command of trial #{row.number}")

    def action_write_command(self) -> None:
        row = self._chosen()
        if row is None:
            return
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.view.name).strip("-") or "study"
        path = self.out_dir / f"{stem}-trial-{row.number}.txt"
        try:
            path.write_text(self.view.command(row) + "\n")
        except (AutotuneError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"wrote the launch command of trial #{row.number} to {path}")

    def action_stop(self) -> None:
        """Ask the study to stop: the running trials finish and are recorded, then it stops."""
        if not self.study_running and (self.snapshot is None or self.snapshot.status != "running"):
            self.notify("the study is not running", severity="warning")
            return
        self.run_worker(self._request_stop, name="stop", thread=True, exit_on_error=False)

    def _request_stop(self) -> None:
        self.view.request_stop()
        self.call_from_thread(self.notify, "stop requested: the running trial finishes, then the study stops "
                                           "(continue it later with autotune run ... --resume)", timeout=10)
        self.call_from_thread(self.poll)

    async def action_interrupt(self) -> None:
        """Ctrl-C: as Ctrl-C stops ``autotune run``, it stops a study run here (gracefully); a viewer leaves."""
        if self._study is not None:
            self.action_stop()
        else:
            self.exit()

    async def action_quit(self) -> None:
        """Leave; a study run by this app is stopped first, after its running trial."""
        if self.study_running:
            if not self._quit_when_done:
                self._quit_when_done = True
                self.action_stop()
            return
        self.exit()

"""``autotune run --tui``: the study runs in a worker thread of the dashboard, which shows it live."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from autotune.errors import AutotuneError
from autotune.search.actions import PreparedStudy, StudyRequest, prepare_study, report
from autotune.search.records import TrialRecord
from autotune.search.study import Budget, StudyOutcome
from autotune.tui.dashboard import POLL_S, DashboardApp
from autotune.tui.study_view import StudyView


def dashboard_for(prepared: PreparedStudy, model_path: Path, budget: Budget, remeasure: bool,
                  poll_s: float = POLL_S, serve_log: Console | None = None) -> DashboardApp:
    """The app that runs the prepared study (then, given ``serve_log``, serves its finalists,
    writing what that says there); each finished trial asks it to read the database again."""
    tuner = prepared.tuner

    def study() -> StudyOutcome:
        outcome = tuner.run(model_path, budget, remeasure=remeasure)
        if serve_log is not None:
            from autotune.search.verify import serve_concluded

            serve_concluded(tuner, outcome, model_path, serve_log)
        return outcome

    app = DashboardApp(StudyView(tuner.db, tuner.study_name), poll_s=poll_s, study=study)

    def on_trial(record: TrialRecord) -> None:
        app.call_from_thread(app.poll)

    tuner.on_trial = on_trial
    return app


def run_with_dashboard(request: StudyRequest, console: Console, remeasure: bool = True, gpus: None = None,
                       verify: bool = True) -> StudyOutcome:
    """``run_study`` behind the dashboard; once the app closes, what serving the finalists said,
    and the report of ``autotune run``."""
    prepared = prepare_study(request)
    for note in prepared.notes:
        console.print(note)
    model_path = request.model_path
    log = Console(file=io.StringIO(), width=console.width, force_terminal=console.is_terminal)
    app = dashboard_for(prepared, model_path, Budget(request.trials, request.seconds), remeasure,
                        serve_log=log if verify else None)
    app.run()
    console.file.write(log.file.getvalue())
    if app.study_error is not None:
        raise app.study_error
    outcome: StudyOutcome | None = app.outcome
    if outcome is None:
        raise AutotuneError(f"the dashboard closed before study {prepared.tuner.study_name} ended; "
                            "continue it with autotune run ... --resume")
    report(console, outcome, model_path, prepared.backends, prepared.unit, prepared.tuner.study_name)
    return outcome

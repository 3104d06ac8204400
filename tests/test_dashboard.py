"""The dashboard driven by Textual's pilot against recorded study databases, and snapshots of its screen."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from autotune.backends.base import Workload
from autotune.cli import app as cli
from autotune.search.actions import StudyRequest, prepare_study
from autotune.search.records import stop_requested
from autotune.search.study import Budget
from autotune.storage import Database
from autotune.tui.dashboard import DashboardApp
from autotune.tui.run import dashboard_for
from autotune.tui.study_view import StudyView
from autotune.tui.trials_table import TrialsTable
from tests.recorded_study import FAKE, add_running, add_trial, recorded_study, register

SIZE = (80, 24)


def run_async(test: Callable[..., Any]) -> Callable[..., None]:
    """A coroutine test run to its end by asyncio (pytest sees the fixtures of the coroutine)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


async def until(pilot, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the app run until ``condition`` holds (it polls the database in a thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the dashboard did not get there in time"
        await pilot.pause(0.05)


def _numbers(app: DashboardApp) -> list[int]:
    return [row.number for row in app.query_one(TrialsTable).shown]


def _app(db: Database, tmp_path: Path, name: str = "demo", poll_s: float = 0.1) -> DashboardApp:
    return DashboardApp(StudyView(db, name), poll_s=poll_s, out_dir=tmp_path)


@run_async
async def test_rows_appear_as_trials_are_added(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = register(db, "live", seconds=3600)
    app = _app(db, tmp_path, "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.polls > 0)
        assert _numbers(app) == []
        add_trial(study, 4, 2, "ok")
        add_trial(study, 1, 4, "ok")
        await until(pilot, lambda: _numbers(app) == [0, 1])
        assert 0 < app.snapshot.eta_seconds < 3600  # the pace of the trials so far, within the time budget
        add_running(study, 2, 3)
        await until(pilot, lambda: _numbers(app) == [0, 1, 2])
        assert app.query_one(TrialsTable).shown[-1].outcome == "running"
        assert app.snapshot.best.number == 1  # the faster of the two
        add_trial(study, 2, 1, "crash")
        await until(pilot, lambda: app.query_one("#failures").count == 1)
        assert "child died with code -6" in "\n".join(app.query_one("#failures").lines)


@run_async
async def test_sorting_by_key_and_by_header_click(tmp_path: Path):
    app = _app(recorded_study(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path)
    async with app.run_test(size=(120, 34)) as pilot:
        await until(pilot, lambda: app.polls > 0)
        assert _numbers(app) == list(range(12))
        await pilot.press("s")  # by the objective, fastest first, failures and pruned last
        shown = app.query_one(TrialsTable).shown
        assert shown[0].number == 1 and shown[0].objective == max(r.objective or 0 for r in shown)
        objectives = [row.objective for row in shown if row.objective is not None]
        assert objectives == sorted(objectives, reverse=True)
        assert {row.outcome for row in shown[-3:]} == {"pruned", "crash", "oom"}
        await pilot.press("r")
        objectives = [row.objective for row in app.query_one(TrialsTable).shown if row.objective is not None]
        assert objectives == sorted(objectives)
        table = app.query_one(TrialsTable)
        x = 1 + sum(column.get_render_width(table) for column in list(table.columns.values())[:3]) + 2
        assert await pilot.click(TrialsTable, offset=(x, 1))  # the n_cpu_moe header
        assert table.sort == "knob:n_cpu_moe"
        knobs = [row.config["n_cpu_moe"] for row in table.shown]
        assert knobs == sorted(knobs)


@run_async
async def test_filtering_by_outcome_and_backend(tmp_path: Path):
    app = _app(recorded_study(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.polls > 0)
        await pilot.press("o")
        assert {row.outcome for row in app.query_one(TrialsTable).shown} == {"ok"}
        await pilot.press("o")
        assert [(r.number, r.outcome) for r in app.query_one(TrialsTable).shown] == [(3, "crash"), (7, "oom")]
        await pilot.press("o")
        assert _numbers(app) == [2]  # pruned
        await pilot.press("o", "o")  # running (none), then all again
        assert len(_numbers(app)) == 12
        await pilot.press("b")
        assert app.query_one(TrialsTable).backend_filter == "fake" and len(_numbers(app)) == 12
        await pilot.press("b")
        assert app.query_one(TrialsTable).backend_filter is None


@pytest.mark.slow
@run_async
async def test_copy_and_write_the_selected_launch_command(tmp_path: Path):
    app = _app(recorded_study(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.polls > 0)
        await pilot.press("down", "c")
        assert app.clipboard == """fake-server -m /models/tiny.gguf --config '{"n_cpu_moe": 1, "n_threads": 4}'"""
        await pilot.press("down", "w")
        written = tmp_path / "demo-trial-2.txt"
        assert written.read_text() == """fake-server -m /models/tiny.gguf --config '{"n_cpu_moe": 0, "n_threads": 3}'\n"""


@pytest.mark.slow
@run_async
async def test_the_stop_key_stores_a_stop_request_only_for_a_running_study(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    recorded_study(url, "done", status="finished")
    db = recorded_study(url, "going", status="running")
    for name, stopped in (("done", False), ("going", True)):
        app = _app(db, tmp_path, name)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.polls > 0)
            await pilot.press("x")
            study = optuna.load_study(study_name=name, storage=db.optuna_storage())
            if stopped:
                await until(pilot, lambda: bool(app.snapshot.stop_requested))
            else:
                await pilot.pause(0.3)
            assert stop_requested(study) is stopped


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl+c", "sigterm"])
@run_async
async def test_run_tui_stops_after_the_running_trial(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    stop: str):
    """``autotune run --tui``: the study runs in the app's worker; Ctrl-C (as x) or SIGTERM (as q) stops it
    once its running trial is recorded."""
    monkeypatch.setenv("FAKE_BACKEND_SECONDS", "1.0")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    request = StudyRequest(model_path=tiny_model, vram_cap=8 * 2**30, backend_names=[FAKE], trials=6, seconds=None,
                           workload=Workload(repetitions=2), study_name="tui", storage_url=url, resume=False,
                           trial_timeout_s=60.0, sampler="tpe", seed=0, batch=1)
    app = dashboard_for(prepare_study(request), tiny_model, Budget(6), remeasure=False, poll_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.snapshot is not None and any(r.outcome == "running" for r in app.snapshot.rows))
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # the app stops the study, then leaves
            await until(pilot, lambda: app.outcome is not None and app.return_code is not None)
        else:
            await pilot.press("ctrl+c")  # the study stops; the app stays
            await until(pilot, lambda: app.outcome is not None and app.snapshot.status == "stopped")
    assert Database(url).study("tui").status == "stopped"
    assert app.outcome.interrupted and app.study_error is None
    trials = optuna.load_study(study_name="tui", storage=Database(url).optuna_storage()).get_trials()
    assert trials and all(t.state is TrialState.COMPLETE for t in trials)  # the running trial was recorded
    assert len(trials) < 6

    resumed = prepare_study(dataclasses.replace(request, resume=True))  # --resume runs the rest
    assert not stop_requested(resumed.tuner.study)
    outcome = resumed.tuner.run(tiny_model, Budget(6), remeasure=False)
    assert not outcome.interrupted and len(resumed.tuner.measured_trials()) == 6


@pytest.mark.parametrize("size", [(80, 24), (120, 34)])
def test_main_screen_snapshot(snap_compare, tmp_path: Path, size: tuple[int, int]):
    app = _app(recorded_study(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path, poll_s=60)

    async def shown(pilot) -> None:
        await until(pilot, lambda: app.polls > 0)

    assert snap_compare(app, terminal_size=size, run_before=shown)


@pytest.mark.parametrize("args, message", [
    (["dashboard"], "no study in"),
    (["dashboard", "nope"], "no study named 'nope'"),
])
def test_dashboard_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str):
    result = CliRunner().invoke(cli, [*args, "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_run_tui_with_gpus_is_refused(tiny_model: Path, tmp_path: Path):
    result = CliRunner().invoke(cli, ["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--tui",
                                      "--gpus", "0,1", "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert result.exit_code == 2 and "autotune dashboard" in result.output

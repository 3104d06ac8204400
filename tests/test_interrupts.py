"""A Ctrl-C that lands inside a finalizer, where Python ignores the exception, still stops the
study; one that lands while a trial is being created waits until its worker has claimed it."""

from __future__ import annotations

import gc
import os
import signal
import threading
import weakref
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autotune import interrupts
from autotune.backends.base import Config, Measurement, Outcome, TrialResult, Workload
from autotune.hardware import probe_hardware
from autotune.model_info import inspect_model
from autotune.search.records import TrialRecord
from autotune.search.study import Budget, Tuner, register_study
from autotune.storage import Database
from tests.fake_backend import FakeBackend


@pytest.fixture
def installed():
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    yield
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


class _Thing:
    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored one, as reported
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_swallowed_by_a_finalizer_is_raised_at_the_next_check(installed, signum: int):
    thing = _Thing()
    weakref.finalize(thing, os.kill, os.getpid(), signum)  # the handler runs inside the finalizer
    del thing
    gc.collect()  # Python reports the KeyboardInterrupt as ignored and goes on
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_requested()
    interrupts.raise_if_requested()  # once only


def test_a_signal_raises_where_the_program_is_and_once_more_at_the_next_check(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_requested()
    interrupts.raise_if_requested()


class SwallowingBackend(FakeBackend):
    """Measures in this process; during its second trial a Ctrl-C lands in a finalizer."""

    def __init__(self):
        self.calls = 0

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        self.calls += 1
        if self.calls == 2:
            thing = _Thing()
            weakref.finalize(thing, os.kill, os.getpid(), signal.SIGINT)
            del thing
            gc.collect()
        return TrialResult(Outcome.OK, decode_tps=Measurement.of([10.0, 10.5]), peak_vram_bytes=2**30)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_tuner_stops_after_the_trial_in_which_a_ctrl_c_was_swallowed(installed, tiny_model: Path, tmp_path: Path):
    db, model, hardware, workload = (Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model),
                                     probe_hardware(), Workload(repetitions=2))
    register_study(db, model, hardware, "swallowed", 8 * 2**30, workload, {})
    backend = SwallowingBackend()
    tuner = Tuner(db, model, hardware, [backend], 8 * 2**30, workload, "swallowed", seed=0, batch=1)
    outcome = tuner.run(tiny_model, Budget(trials=5), remeasure=False)
    assert outcome.interrupted and not outcome.stop_requested
    assert backend.calls == 2
    assert len(tuner.study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_a_signal_inside_a_deferred_block_is_raised_at_its_end(installed):
    ran_on = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            ran_on = True
    assert ran_on
    interrupts.raise_if_requested()  # raised once only


def test_a_deferred_block_in_another_thread_does_not_hold_the_main_threads_signal(installed):
    """The dashboard runs the study in a worker thread: its blocks leave Ctrl-C to the main thread."""
    entered, release = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def study_thread() -> None:
        try:
            with interrupts.deferred():
                entered.set()
                release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            raised.append(exc)

    thread = threading.Thread(target=study_thread)
    thread.start()
    entered.wait(10)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        release.set()
        thread.join(10)
    assert raised == []
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_requested()  # and the study's next check stops it


def test_a_ctrl_c_while_a_trial_is_created_leaves_it_claimed(installed, tiny_model: Path, tmp_path: Path):
    """The trial exists in the storage once ``ask`` has made it; stopped before its worker names
    itself, it would stay running and unclaimed until the grace period, through a resume."""
    db, model, hardware, workload = (Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model),
                                     probe_hardware(), Workload(repetitions=2))
    register_study(db, model, hardware, "asked", 8 * 2**30, workload, {})
    tuner = Tuner(db, model, hardware, [FakeBackend()], 8 * 2**30, workload, "asked", seed=0, batch=1)
    ask = tuner.study.ask

    def ask_then_ctrl_c(*args, **kwargs):
        trial = ask(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return trial

    tuner.study.ask = ask_then_ctrl_c
    assert tuner.run(tiny_model, Budget(trials=3), remeasure=False).interrupted
    running = tuner.study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and TrialRecord.from_trial(running[0]).worker["pid"] == os.getpid()

"""A stop asked through the database (the dashboard's stop key): the running trial finishes and is
recorded, the study is marked stopped, and resuming it runs the rest of the budget."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotune.backends.base import Config, Measurement, Outcome, TrialResult, Workload
from autotune.hardware import probe_hardware
from autotune.model_info import inspect_model
from autotune.search.records import request_stop, stop_requested
from autotune.search.study import Budget, Tuner, register_study
from autotune.storage import Database
from tests.fake_backend import FakeBackend


class StoppingBackend(FakeBackend):
    """Measures in this process; while measuring its ``stop_at``-th trial, another client asks the study to stop."""

    def __init__(self, url: str, stop_at: int | None):
        self.url, self.stop_at, self.calls = url, stop_at, 0

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        self.calls += 1
        if self.calls == self.stop_at:
            request_stop(optuna.load_study(study_name="stoppable", storage=Database(self.url).optuna_storage()))
        return TrialResult(Outcome.OK, decode_tps=Measurement.of([10.0 + config["n_threads"], 10.5]),
                           peak_vram_bytes=2**30)


def _tuner(tiny_model: Path, url: str, backend: StoppingBackend) -> Tuner:
    db, model, hardware, workload = Database(url), inspect_model(tiny_model), probe_hardware(), Workload(repetitions=2)
    register_study(db, model, hardware, "stoppable", 8 * 2**30, workload, {})
    return Tuner(db, model, hardware, [backend], 8 * 2**30, workload, "stoppable", seed=0, batch=1)


def test_a_stop_request_ends_the_study_after_the_running_trial_and_resume_goes_on(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    tuner = _tuner(tiny_model, url, StoppingBackend(url, stop_at=2))
    outcome = tuner.run(tiny_model, Budget(trials=5), remeasure=False)
    assert outcome.interrupted and outcome.stop_requested and outcome.winner is None
    trials = tuner.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # the running trial was recorded, nothing else asked
    assert Database(url).study("stoppable").status == "stopped"

    resumed = _tuner(tiny_model, url, StoppingBackend(url, stop_at=None))
    resumed.clear_stop_request()
    assert not stop_requested(resumed.study)
    outcome = resumed.run(tiny_model, Budget(trials=5), remeasure=False)
    assert not outcome.interrupted and outcome.winner is not None
    assert len(resumed.measured_trials()) == 5
    assert {t.number for t in trials} <= {t.number for t in resumed.measured_trials()}  # nothing lost
    assert Database(url).study("stoppable").status == "finished"


def test_a_stop_request_during_the_race_leaves_the_study_unconcluded(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    backend = StoppingBackend(url, stop_at=4)  # the race's first re-measurement after three trials
    tuner = _tuner(tiny_model, url, backend)
    for n_threads in (1, 2, 3):
        tuner.study.enqueue_trial({"n_cpu_moe": 4, "n_threads": n_threads})
    outcome = tuner.run(tiny_model, Budget(trials=3))
    assert outcome.interrupted and outcome.winner is None
    assert backend.calls == 4  # the re-measurement that was running finished; no other began
    assert Database(url).study("stoppable").status == "stopped"

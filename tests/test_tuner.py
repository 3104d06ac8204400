"""The study driver with the fake backend: budget, pruning, faults, warm start, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from autotune.backends.base import Outcome
from autotune.cli import app
from autotune.search.records import TrialRecord
from autotune.storage import Database

FAKE = "tests.fake_backend:FakeBackend"
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=Database(url).optuna_storage()).get_trials()


def test_study_runs_prunes_and_stores_best(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # cap 2.5 GiB: n_cpu_moe >= 1 fits (1 GiB + 0.5 GiB per GPU layer of 4)
    done = _run(["run", str(tiny_model), "--vram-cap", "2.5G", "--backends", FAKE, "--trials", "8",
                 "--storage", url, "--study", "s1", "--seed", "1"])
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials(url, "s1")
    measured = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(measured) == 8
    assert all(TrialRecord.from_trial(t).predicted_vram <= 2.5 * 2**30 for t in measured)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert all(TrialRecord.from_trial(t).predicted_vram > 2.5 * 2**30 for t in pruned)
    assert measured[0].params == {"n_cpu_moe": 4, "n_threads": 2}  # the baseline goes first
    assert "winner" in done.stdout
    best = runner.invoke(app, ["best", str(tiny_model), "--storage", url, "--json"])
    assert best.exit_code == 0, best.output
    assert '"backend": "fake"' in best.output


@pytest.mark.slow
def test_faults_are_recorded_and_the_study_goes_on(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {"FAKE_BACKEND_FAULTS": "4=crash,1=hang,2=oom"}
    done = _run(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "10",
                 "--storage", url, "--study", "faults", "--seed", "3", "--no-remeasure"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    outcomes = {t.params["n_cpu_moe"]: TrialRecord.from_trial(t).outcome for t in _trials(url, "faults")
                if t.state.name == "COMPLETE"}
    assert outcomes.get(4) is Outcome.CRASH  # the baseline crashes first, the study continues
    # seed 3 samples both within the 10 trials (TPE's first 10 are its seeded random startup)
    assert outcomes.get(1) is Outcome.TIMEOUT and outcomes.get(2) is Outcome.OOM, outcomes


@pytest.mark.slow
def test_second_run_warm_starts_from_the_first(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    common = ["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--storage", url, "--seed", "2"]
    assert _run([*common, "--trials", "6", "--study", "first"]).returncode == 0
    first_best = Database(url).best_configs(Database(url).studies()[0].model_fingerprint)[0].config
    second = _run([*common, "--trials", "2", "--study", "second", "--no-remeasure"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "warm start: 6" in second.stdout
    trials = _trials(url, "second")
    copied = [t for t in trials if TrialRecord.from_trial(t).warm_start_from == "first"]
    assert len(copied) == 6
    run_here = [t for t in trials if TrialRecord.from_trial(t).measured_here and t.state.name == "COMPLETE"]
    assert run_here[0].params == first_best  # the earlier winner is tried first


@pytest.mark.slow
def test_sigint_then_resume_loses_nothing(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    args = [sys.executable, "-m", "autotune.cli", "run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE,
            "--storage", url, "--study", "resumable", "--trials", "8", "--seed", "4", "--no-remeasure"]
    env = {**os.environ, "FAKE_BACKEND_SECONDS": "0.7"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(6)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "--resume" in output
    before = [t for t in _trials(url, "resumable") if t.state.name == "COMPLETE"]
    assert 0 < len(before) < 8
    resumed = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _trials(url, "resumable")
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    assert {t.number for t in before} <= {t.number for t in complete}  # nothing lost
    assert not [t for t in after if t.state.name == "RUNNING"]


@pytest.mark.parametrize("cap, message", [("0.5G", "below the smallest config"), ("16X", "cannot read the size")])
def test_bad_caps_are_clear_errors(tiny_model: Path, tmp_path: Path, cap: str, message: str):
    done = _run(["run", str(tiny_model), "--vram-cap", cap, "--backends", FAKE, "--storage", f"sqlite:///{tmp_path / 'd.db'}"])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_history_lists_studies(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert _run(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "2",
                 "--storage", url, "--study", "listed", "--no-remeasure"]).returncode == 0
    result = runner.invoke(app, ["history", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "listed" in result.output and "finished" in result.output and "autotune" in result.output

"""Issue 9: bad input gives one clear line and leaves the database clean; faults inside trials
are recorded or stop the study with a reason; interrupted and killed studies resume with
nothing lost or counted twice; several processes share one SQLite database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from gguf import GGUFWriter
from optuna.trial import TrialState

from autotune.backends.base import Outcome
from autotune.search.records import TrialRecord
from autotune.storage import Database

FAKE = "tests.fake_backend:FakeBackend"
ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def _start(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=Database(url).optuna_storage()).get_trials()


def _complete(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in _trials(url, name) if t.state is TrialState.COMPLETE]


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or all(not line.startswith("error:") for line in lines[1:]), done.stderr
    return " ".join(line.strip() for line in lines)  # one error, wrapped by the terminal width


def _write_gguf(path: Path, architecture: str) -> Path:
    writer = GGUFWriter(path, architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_context_length(256)
    writer.add_feed_forward_length(128)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _no_trial_counted_twice(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Nothing is left running, and a trial cut off and run again is measured once."""
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    for cut in (t for t in trials if t.state is TrialState.FAIL):
        again = [t for t in trials if t.state is TrialState.COMPLETE and (
            t.system_attrs.get("failed_trial") == cut.number or (TrialRecord.from_trial(t).seeded or "").endswith(f" {cut.number}"))]
        assert len(again) <= 1


# -- bad input -------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_input_is_one_line_and_leaves_nothing_behind(tiny_model: Path, dense_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    alien = _write_gguf(tmp_path / "alien.gguf", "notreal")
    common = ["--storage", url, "--study", "s", "--trials", "1"]
    cases = [
        ([str(text), "--vram-cap", "8G", "--backends", FAKE], "not a GGUF file"),
        ([str(cut), "--vram-cap", "8G", "--backends", FAKE], "truncated"),
        ([str(alien), "--vram-cap", "8G"], "llama.cpp does not support the architecture 'notreal'"),
        ([str(dense_model), "--vram-cap", "8G", "--backends", FAKE], "FakeBackend: needs experts"),
        ([str(tiny_model), "--vram-cap", "0.5G", "--backends", FAKE],
         "below the smallest config for this model (1.00 GiB predicted)"),
        ([str(tiny_model), "--vram-cap", "16X", "--backends", FAKE], "cannot read the size '16X'"),
        ([str(tiny_model), "--vram-cap", "0G", "--backends", FAKE], "must be more than zero"),
        ([str(tiny_model), "--vram-cap", "-4G", "--backends", FAKE], "cannot read the size '-4G'"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--time", "soon"], "cannot read the duration"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--time", "0s"],
         "--time: the duration '0s' must be more than zero"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--time", "-5m"],
         "--time: cannot read the duration '-5m'"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trial-timeout", "0"],
         "--trial-timeout: the duration '0' must be more than zero"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--sampler", "bogus"], "unknown sampler 'bogus'"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", "nonsense"], "unknown backend 'nonsense'"),
        ([str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--resume"], "no study named 's' to resume"),
    ]
    if _has_llama_cpp():
        cases.append(([str(dense_model), "--vram-cap", "8G"], "llama.cpp cannot load it"))
    for args, message in cases:
        assert message in _one_line_error(_cli(["run", *args, *common])), args
    assert Database(url).studies() == []
    later = _cli(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, *common, "--no-remeasure"])
    assert later.returncode == 0, later.stdout + later.stderr


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.slow
@pytest.mark.parametrize("storage, message", [
    ("postgresql://nobody@127.0.0.1:1/x", "Connection refused"),
    ("sqlite:///{tmp}/missing/dir/db.sqlite", "does its directory exist"),
    ("sqlite:///{tmp}/a-file/db.sqlite", "does its directory exist"),
    ("postgresql://nobody:hunter2@127.0.0.1:1/x", "nobody:***@127.0.0.1:1/x"),
    ("nosuchdb://x", "cannot open the storage"),
    ("autotune.db", "not a database URL; for a SQLite file write sqlite:////"),
])
def test_unreachable_storage_is_one_line(tiny_model: Path, tmp_path: Path, storage: str, message: str):
    (tmp_path / "a-file").write_text("")
    storage = storage.format(tmp=tmp_path)
    for command in (["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE], ["history"],
                    ["worker", str(tiny_model), "--study", "s"]):
        error = _one_line_error(_cli([*command, "--storage", storage]))
        assert "cannot open the storage" in error and message in error and "hunter2" not in error
    assert not (tmp_path / "missing").exists() and not (ROOT / "autotune.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["worker", "{model}", "--study", "s"], ["study", "run", "{tmp}"]])
@pytest.mark.parametrize("budget, message", [("0s", "--time: the duration '0s' must be more than zero"),
                                             ("0.0m", "--time: the duration '0.0m' must be more than zero")])
def test_a_zero_time_budget_names_its_flag(tiny_model: Path, tmp_path: Path, command: list[str], budget: str,
                                           message: str):
    args = [arg.format(model=tiny_model, tmp=tmp_path) for arg in command]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = ["--storage", url] if command[0] == "worker" else []
    assert message in _one_line_error(_cli([*args, *storage, "--time", budget]))
    assert not (tmp_path / "db.sqlite").exists()  # refused before anything was opened


@pytest.mark.slow
def test_odd_model_paths_run_and_export(tiny_model: Path, tmp_path: Path):
    odd = tmp_path / "mödel 'quoted' \"x\" $(touch pwned) ;.gguf"
    odd.write_bytes(tiny_model.read_bytes())
    url = f"sqlite:///{tmp_path / 'db with space.sqlite'}"
    done = _cli(["run", str(odd), "--vram-cap", "8G", "--backends", FAKE, "--trials", "2", "--storage", url,
                 "--no-remeasure"])
    assert done.returncode == 0, done.stdout + done.stderr
    best = _cli(["best", str(odd), "--storage", url, "--json"])
    assert best.returncode == 0 and '"backend": "fake"' in best.stdout
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()


# -- faults inside trials ----------------------------------------------------------------


@pytest.mark.slow
def test_a_lost_gpu_stops_the_study_with_its_reason_and_resume_goes_on(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    args = ["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "3", "--storage", url,
            "--study", "lost", "--no-remeasure"]
    error = _one_line_error(_cli(args, FAKE_BACKEND_FAULTS="4=gpu_lost"))  # the first baseline
    assert "the GPU stopped answering during trial 0 (the GPU stopped answering NVML (GPU is lost))" in error
    assert "--resume" in error
    assert Database(url).study("lost").status == "stopped"
    [trial] = _trials(url, "lost")[:1]
    record = TrialRecord.from_trial(trial)
    assert trial.state is TrialState.FAIL and record.outcome is Outcome.GPU_LOST
    assert "GPU is lost" in record.message
    resumed = _cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = _trials(url, "lost")
    _no_trial_counted_twice(trials)
    assert len([t for t in trials if t.state is TrialState.COMPLETE]) == 3
    assert any(t.params == trial.params and t.state is TrialState.COMPLETE for t in trials)  # given back, run again


# -- interruption ------------------------------------------------------------------------


def _interrupted_then_resumed(url: str, name: str, interrupt, trials: int = 6, seconds: str = "0.5") -> None:
    args = ["run", os.environ["AUTOTUNE_TEST_MODEL"], "--vram-cap", "8G", "--backends", FAKE, "--storage", url,
            "--study", name, "--trials", str(trials), "--seed", "4", "--no-remeasure"]
    process = _start(args, FAKE_BACKEND_SECONDS=seconds)
    try:
        interrupt(process)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    before = _complete(url, name)
    assert 0 < len(before) < trials
    resumed = _cli([*args, "--resume"], FAKE_BACKEND_SECONDS="0.05")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _trials(url, name)
    _no_trial_counted_twice(after)
    complete = [t for t in after if t.state is TrialState.COMPLETE]
    assert len(complete) == trials
    assert {t.number for t in before} <= {t.number for t in complete}  # every completed trial is still there


def _when_measured(url: str, name: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(_complete(url, name)) >= count:
                return
        except KeyError:  # the study is not made yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"study {name} never reached {count} measured trials")


def _when_running(url: str, name: str):
    """The first trial found running (its worker's attributes set), polled for up to 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [t for t in _trials(url, name)
                   if t.state is TrialState.RUNNING and TrialRecord.from_trial(t).worker is not None]
        if running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no trial of study {name} was seen running")


@pytest.fixture
def model_env(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_TEST_MODEL", str(tiny_model))


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])  # one is fast
def test_signal_during_a_trial_then_resume(model_env: None, tmp_path: Path, signum: int):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    def interrupt(process: subprocess.Popen) -> None:
        _when_measured(url, "s", 2)
        time.sleep(0.2)  # into the next trial (each takes 0.5 s)
        process.send_signal(signum)
        assert process.wait(timeout=180) == 130

    _interrupted_then_resumed(url, "s", interrupt)


@pytest.mark.slow
def test_sigint_during_a_database_write_then_resume(model_env: None, tmp_path: Path):
    """The test holds the database's write lock, so the tuner's next write waits inside SQLite;
    the interrupt arrives then, and the lock is let go after it."""
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"

    def interrupt(process: subprocess.Popen) -> None:
        _when_measured(url, "s", 2)
        lock = sqlite3.connect(path, isolation_level=None, timeout=60)
        lock.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)  # a trial ends (0.5 s) and its result waits to be written
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        lock.execute("COMMIT")
        lock.close()
        assert process.wait(timeout=180) == 130

    _interrupted_then_resumed(url, "s", interrupt, seconds="0.5")


@pytest.mark.slow
def test_kill_9_of_the_tuner_then_resume(model_env: None, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    def interrupt(process: subprocess.Popen) -> None:
        _when_measured(url, "s", 2)
        running = _when_running(url, "s")  # a trial in flight (a loaded machine may take a while to ask)
        assert TrialRecord.from_trial(running).worker["pid"] == process.pid
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=180)

    _interrupted_then_resumed(url, "s", interrupt)


# -- concurrency on one SQLite file --------------------------------------------------------


@pytest.mark.slow
def test_two_runs_on_one_sqlite_database_and_on_one_study(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    common = ["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--storage", url, "--no-remeasure"]
    first = _start([*common, "--study", "a", "--trials", "10"], FAKE_BACKEND_SECONDS="0.3")
    other_study = _start([*common, "--study", "b", "--trials", "4"], FAKE_BACKEND_SECONDS="0.1")
    _when_measured(url, "a", 1)
    same_study = _start([*common, "--study", "a", "--trials", "10", "--resume"], FAKE_BACKEND_SECONDS="0.3")
    outputs = [process.communicate(timeout=300)[0] for process in (first, other_study, same_study)]
    assert [p.returncode for p in (first, other_study, same_study)] == [0, 0, 0], outputs
    # whichever of a and b starts later warm-starts from what the other measured by then: copies, not measurements
    assert len([t for t in _complete(url, "b") if TrialRecord.from_trial(t).measured_here]) == 4
    trials = _trials(url, "a")
    _no_trial_counted_twice(trials)
    measured = [record for t in trials if t.state is TrialState.COMPLETE
                and (record := TrialRecord.from_trial(t)).measured_here]
    assert len(measured) >= 10 and all(record.result is not None for record in measured)
    assert {record.worker["pid"] for record in measured} == {first.pid, same_study.pid}  # both contributed

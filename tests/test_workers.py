"""Several workers on one study through a shared database: local processes on SQLite, and a
fleet on a real PostgreSQL server (started on loopback by the fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from postgres_cluster import postgres_server, postgres_url  # noqa: F401 (fixtures)

from autotune.backends.base import Outcome
from autotune.search.liveness import fail_dead_trials, identity
from autotune.search.records import TrialRecord
from autotune.storage import Database

FAKE = "tests.fake_backend:FakeBackend"
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env or _env())


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=Database(url).optuna_storage()).get_trials()


def _measured(trials: list[optuna.trial.FrozenTrial]) -> list[TrialRecord]:
    return [record for t in trials
            if t.state is TrialState.COMPLETE and (record := TrialRecord.from_trial(t)).measured_here]


def _nothing_stuck_or_doubled(trials: list[optuna.trial.FrozenTrial]) -> None:
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)
    assert len({t._trial_id for t in trials}) == len(trials)
    assert all(record.result is not None for record in _measured(trials))  # every count is a measurement


@pytest.mark.slow
def test_run_on_two_gpus_pins_one_worker_to_each(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    barrier = tmp_path / "barrier"  # both workers measure, however slowly the second starts
    barrier.mkdir()
    done = _cli(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "8", "--storage", url,
                 "--study", "pair", "--gpus", "0,1", "--no-remeasure", "--seed", "5"],
                _env(FAKE_BACKEND_SECONDS="0.5", FAKE_BACKEND_BARRIER=f"{barrier}:2"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers on study pair" in done.stdout and "winner" in done.stdout
    assert "ended with status" not in done.stdout  # no worker died (two taking one queued trial did)
    trials = _trials(url, "pair")
    _nothing_stuck_or_doubled(trials)
    measured = _measured(trials)
    assert len(measured) >= 8
    assert {record.result.extra["cuda_visible_devices"] for record in measured} == {"0", "1"}
    assert len({record.worker["pid"] for record in measured}) == 2
    for record in measured:  # the parent showed every trial the workers measured
        assert f"#{record.number:<3} fake" in done.stdout
    assert Database(url).best_configs(Database(url).studies()[0].model_fingerprint)


@pytest.mark.slow
def test_the_race_after_the_workers_runs_on_the_first_gpu_and_leaves_this_process_environment(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import io

    from rich.console import Console

    from autotune.backends.base import Workload
    from autotune.search.actions import StudyRequest, run_study

    monkeypatch.setenv("FAKE_BACKEND_SECONDS", "0.2")  # what the workers inherit, set by the test itself
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    before = dict(os.environ)
    request = StudyRequest(tiny_model, 8 * 2**30, [FAKE], 4, None, Workload(repetitions=2), "race", url, False, 60.0,
                           "random", 3)
    outcome = run_study(request, Console(file=io.StringIO()), remeasure=True, gpus=["0", "1"])
    assert dict(os.environ) == before  # nothing pinned this process for the race
    assert outcome.winner is not None
    attrs = optuna.load_study(study_name="race", storage=Database(url).optuna_storage()).user_attrs
    raced = [result for key, results in attrs.items() if key.startswith("remeasured:") for result in results]
    assert raced and {result["extra"]["cuda_visible_devices"] for result in raced} == {"0"}


def test_bad_gpu_lists_are_clear_errors(tiny_model: Path, tmp_path: Path):
    done = _cli(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--gpus", "0,0",
                 "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert done.returncode == 2 and "--gpus '0,0'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_worker_joins_only_the_studys_model_and_machine(tiny_model: Path, dense_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    missing = _cli(["worker", str(tiny_model), "--study", "nope", "--storage", url])
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr
    assert _cli(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "1", "--storage", url,
                 "--study", "s", "--no-remeasure"]).returncode == 0
    other_model = _cli(["worker", str(dense_model), "--study", "s", "--storage", url])
    assert other_model.returncode == 2 and "is not the model of study 's'" in other_model.stderr
    db = Database(url)
    with db.session() as session, session.begin():  # as if the study had been made on another machine
        row = session.get(type(db.study("s")), "s")
        row.hardware_fingerprint = "0123456789abcdef"
        from autotune.storage import HardwareRow

        session.add(HardwareRow(fingerprint="0123456789abcdef", description="elsewhere", profile={}))
    other_machine = _cli(["worker", str(tiny_model), "--study", "s", "--storage", url])
    assert other_machine.returncode == 2 and "measures other hardware" in other_machine.stderr
    assert "Traceback" not in other_machine.stderr + other_model.stderr + missing.stderr
    assert len(_measured(_trials(url, "s"))) == 1  # nothing was added


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask-and-tell here, as in the tuner
def test_liveness_fails_dead_workers_trials_and_retries_them_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")  # grace period: 4 s
    study = optuna.create_study(study_name="hb", storage=Database(f"sqlite:///{tmp_path / 'db.sqlite'}").optuna_storage())
    space = {"x": FloatDistribution(0, 1)}

    def running(worker: dict) -> optuna.Trial:
        trial = study.ask(space)
        TrialRecord(trial.number, worker={**worker, "trial": trial.number}).save(trial)
        study._storage.record_heartbeat(trial._trial_id)
        return trial

    gone = subprocess.run([sys.executable, "-c", "import os, psutil; print(os.getpid(), psutil.Process().create_time())"],
                          capture_output=True, text=True, check=True).stdout.split()
    mine = running(identity(0))
    here_dead = running({**identity(0), "pid": int(gone[0]), "started": float(gone[1])})
    elsewhere = running({"host": "another-machine", "pid": os.getpid(), "started": 0.0})
    assert fail_dead_trials(study) == 1  # this host's dead process: at once
    states = {t.number: t.state for t in study.get_trials()}
    assert states[here_dead.number] is TrialState.FAIL
    assert states[mine.number] is TrialState.RUNNING and states[elsewhere.number] is TrialState.RUNNING
    study._storage.record_heartbeat(mine._trial_id)
    time.sleep(5)
    study._storage.record_heartbeat(mine._trial_id)  # a live worker keeps beating
    assert fail_dead_trials(study) == 1  # the silent one elsewhere, once its heartbeats are stale
    trials = study.get_trials()
    assert trials[elsewhere.number].state is TrialState.FAIL and trials[mine.number].state is TrialState.RUNNING
    retries = [t for t in trials if t.state is TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [here_dead.number, elsewhere.number]
    assert all(t.params == trials[t.system_attrs["failed_trial"]].params for t in retries)
    # a retry whose worker dies too is not queued a third time
    retry = study.ask(space)
    TrialRecord(retry.number, worker={"host": "another-machine", "pid": 1, "started": 0.0, "trial": retry.number}
                ).save(retry)
    study._storage.record_heartbeat(retry._trial_id)
    time.sleep(5)
    study._storage.record_heartbeat(mine._trial_id)
    assert fail_dead_trials(study) == 1
    assert len([t for t in study.get_trials() if t.state is TrialState.WAITING]) == 1


@pytest.mark.slow
def test_two_workers_on_postgres_and_one_killed_mid_trial(tiny_model: Path, postgres_url: str):
    env = _env(FAKE_BACKEND_SECONDS="1.0", AUTOTUNE_HEARTBEAT_S="1")
    created = _cli(["run", str(tiny_model), "--vram-cap", "8G", "--backends", FAKE, "--trials", "1",
                    "--storage", postgres_url, "--study", "fleet", "--no-remeasure"], env)
    assert created.returncode == 0, created.stdout + created.stderr
    worker = [sys.executable, "-m", "autotune.cli", "worker", str(tiny_model), "--study", "fleet",
              "--storage", postgres_url, "--trials", "4"]
    victim = subprocess.Popen(worker, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    survivor = subprocess.Popen(worker, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        cut: int | None = None
        while cut is None and time.monotonic() < deadline:
            trials = _trials(postgres_url, "fleet")
            mine = [t for t in trials if (TrialRecord.from_trial(t).worker or {}).get("pid") == victim.pid]
            if any(t.state is TrialState.COMPLETE for t in mine):  # it has finished one: kill it in the next
                cut = next((t.number for t in mine if t.state is TrialState.RUNNING), None)
            time.sleep(0.1)
        assert cut is not None, "the victim never ran a second trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        output, _ = survivor.communicate(timeout=300)
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
    assert survivor.returncode == 0, output
    trials = _trials(postgres_url, "fleet")
    _nothing_stuck_or_doubled(trials)
    assert trials[cut].state is TrialState.FAIL and TrialRecord.from_trial(trials[cut]).outcome is Outcome.STOPPED
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == cut]
    assert retry.state is TrialState.COMPLETE and retry.params == trials[cut].params
    by_pid = {}
    for record in _measured(trials):
        by_pid.setdefault(record.worker["pid"], []).append(record.number)
    assert len(by_pid[survivor.pid]) == 4  # its own share, the retry included
    assert by_pid[victim.pid]  # what the killed worker finished is kept


@pytest.mark.slow
def test_real_llama_cpp_trials_from_two_workers_on_postgres(tiny_model: Path, postgres_url: str):
    pytest.importorskip("llama_cpp")
    done = _cli(["run", str(tiny_model), "--vram-cap", "4G", "--trials", "4", "--storage", postgres_url,
                 "--study", "real", "--gpus", "0,1", "--prompt-tokens", "16", "--gen-tokens", "8", "--repetitions", "1",
                 "--ctx", "64", "--batch", "1", "--no-remeasure", "--seed", "0"])
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials(postgres_url, "real")
    _nothing_stuck_or_doubled(trials)
    measured = _measured(trials)
    assert len(measured) >= 4 and all(record.outcome is Outcome.OK and record.objective > 0 for record in measured)
    assert len({record.worker["pid"] for record in measured}) == 2
    [best] = Database(postgres_url).best_configs(Database(postgres_url).studies()[0].model_fingerprint)
    assert best.backend == "llama_cpp" and best.study_name == "real"


def test_workers_on_one_sqlite_file_take_trials_in_turn(tmp_path: Path):
    """The ask lock of a SQLite file is one lock for every process; in memory there is none."""
    from filelock import FileLock, Timeout

    lock = Database(f"sqlite:///{tmp_path / 'db.sqlite'}").ask_lock()
    with lock:
        with pytest.raises(Timeout):
            FileLock(f"{tmp_path / 'db.sqlite'}.lock").acquire(timeout=0.1)
    FileLock(f"{tmp_path / 'db.sqlite'}.lock").acquire(timeout=0.1)
    assert not isinstance(Database("sqlite://").ask_lock(), FileLock)

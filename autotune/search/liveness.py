"""Which worker runs a trial, its heartbeats, and the trials of workers that died.

Every running trial names its worker (host, pid, process start time) and gets a heartbeat
through Optuna's RDB storage while it runs. A trial left running by a dead worker is failed
by whoever looks next (each tuner does when it starts): at once when the worker ran on this
host and its process is gone, else once its heartbeats are older than the storage's grace
period. Optuna's ``RetryHeartbeatStaleTrialCallback`` (set on the storage) queues such a
trial again, once.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
import warnings
from datetime import datetime, timezone
from typing import Any

import optuna
import psutil
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autotune.backends.base import Outcome
from autotune.search.records import TrialRecord


def identity(trial_number: int) -> dict[str, Any]:
    """This process, as the worker of one trial."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": psutil.Process().create_time(), "trial": trial_number}


def _gone_here(worker: dict[str, Any]) -> bool:
    """The worker ran on this host and its process is gone (a reused pid has another start time)."""
    if worker.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(int(worker["pid"])).create_time() - float(worker["started"])) > 0.01
    except psutil.NoSuchProcess:
        return True


def _orphaned(trial: FrozenTrial, grace_s: float) -> bool:
    worker = TrialRecord.from_trial(trial).worker
    if worker is not None and worker.get("trial") == trial.number:
        return _gone_here(worker)
    # Never claimed (its worker died between asking and naming itself): gone after the grace period.
    started = trial.datetime_start
    if started is None:
        return False
    age = datetime.now(timezone.utc) - (started if started.tzinfo else started.replace(tzinfo=timezone.utc))
    return age.total_seconds() > grace_s


def fail_dead_trials(study: optuna.Study) -> int:
    """Fail the running trials of dead workers, queue each again once; returns how many."""
    storage = study._storage
    grace_s = float(getattr(storage, "grace_period", None) or 120)
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _orphaned(trial, grace_s):
            continue
        try:
            for key, value in TrialRecord(trial.number, outcome=Outcome.STOPPED).to_user_attrs().items():
                storage.set_trial_user_attr(trial._trial_id, key, value)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first, or the trial just finished
        failed += 1
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' workers, by their heartbeats
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
             if t.number in running and TrialRecord.from_trial(t).result is None]
    return failed + len(stale)


class Heartbeat:
    """Records a heartbeat for each trial this process runs, every interval, on a daemon thread."""

    def __init__(self, storage: Any):
        self.storage = storage
        self.interval = storage.get_heartbeat_interval()
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="trial-heartbeat", daemon=True).start()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._trials.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trials.discard(trial_id)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                trials = list(self._trials)
            for trial_id in trials:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a database hiccup: the next beat tries again
                    continue

"""Run trial code in a fresh child process with a deadline, and record how it ended.

The parent never imports what a trial uses (llama_cpp, torch, CUDA): each child is
``python -m autotune.isolation.child_main`` on a target module (see there for the protocol),
in its own session, so a timeout kills its whole process group, grandchildren included.
One child may measure several items that share its setup (configs of one loaded model);
every item gets its own result:

- ``ok``: the item reported its figures; ``over_cap`` when its peak VRAM exceeds the cap;
- ``oom``: the child failed and its output names an out-of-memory condition;
- ``crash``: it raised, exited non-zero, or died by a signal (named in the message);
- ``timeout``: setup or an item did not finish within ``deadline_s`` (checked every 50 ms);
- ``gpu_lost``: the VRAM sampler lost the GPU (NVML errors) while the child ran: every item
  of that child gets it, as none of their figures can be trusted against the cap.

A failure in setup is every item's result. A failure in item k is item k's result, and the
items after it run again in a fresh child. A failed result's message ends with the child's
last output lines, then one line saying how it ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager

from autotune.backends.base import Measurement, Outcome, TrialResult
from autotune.isolation.gpu import TrialGpu
from autotune.isolation.vram import VramSampler

POLL_S = 0.05
TAIL_LINES = 15
_OOM = re.compile(
    r"out of memory|cudaMalloc failed|failed to allocate|unable to allocate|OutOfMemoryError"
    r"|CUDA_ERROR_OUT_OF_MEMORY|ErrorOutOfDeviceMemory",
    re.IGNORECASE,
)

Sampler = Callable[[TrialGpu], ContextManager[VramSampler]]


def run_isolated(
    target: str,
    common: dict[str, Any],
    items: list[dict[str, Any]],
    deadline_s: float,
    *,
    gpu: TrialGpu = TrialGpu(),
    sampler: Sampler = VramSampler,
) -> list[TrialResult]:
    """One result per item, in order; never raises for what happens inside the child. The child
    runs on ``gpu`` (its environment says so) and the sampler samples that GPU."""
    results: list[TrialResult] = []
    while len(results) < len(items):
        results += _run_child(target, common, items[len(results) :], deadline_s, gpu, sampler)
    return results


def run_in_load_groups(
    target: str,
    configs: list[dict[str, Any]],
    load_key: Callable[[dict[str, Any]], Any],
    common: Callable[[dict[str, Any]], dict[str, Any]],
    item: Callable[[dict[str, Any]], dict[str, Any]],
    deadline_s: float,
    *,
    gpu: TrialGpu = TrialGpu(),
) -> list[TrialResult]:
    """One result per config, in order: configs equal in ``load_key`` share a child (one model
    load, set up from the group's first config by ``common``), each measured as ``item``."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(json.dumps(load_key(config), sort_keys=True), []).append(index)
    results: list[TrialResult | None] = [None] * len(configs)
    for indexes in groups.values():
        measured = run_isolated(target, common(configs[indexes[0]]), [item(configs[i]) for i in indexes],
                                deadline_s, gpu=gpu)
        for index, result in zip(indexes, measured):
            results[index] = result
    return [result for result in results if result is not None]


def mentions_oom(text: str) -> bool:
    """Whether output names an out-of-memory condition (a pinned-memory fallback does not count)."""
    return any(_OOM.search(line) and "pinned" not in line for line in text.splitlines())


def check_cap(result: TrialResult, vram_cap: int) -> TrialResult:
    """The result, marked over the cap where its measured peak is above it."""
    peak = result.peak_vram_bytes
    if not result.ok or peak is None or peak <= vram_cap:
        return result
    message = f"peak VRAM {peak / 2**30:.2f} GiB is over the cap of {vram_cap / 2**30:.2f} GiB"
    return replace(result, outcome=Outcome.OVER_CAP, message=message)


def _child_env(gpu: TrialGpu) -> dict[str, str]:
    """This process's environment, on ``gpu``; the child imports what this process imports
    (tests/ included, under pytest)."""
    return {**os.environ, **gpu.env(), "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}


class _Lines:
    """Complete JSON lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _tail(log: Path) -> str:
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 65536))
        text = handle.read().decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-TAIL_LINES:])


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    process.wait()


def _ok(record: dict[str, Any], ready: dict[str, Any], peak: int | None, first: bool) -> TrialResult:
    """An item's result; the child's shared load is counted on its first item only."""
    value, info = record["value"], ready.get("info") or {}
    measured = {key: Measurement.of(value[key]) for key in ("decode_tps", "prefill_tps") if value.get(key)}
    shared_load = info.get("load_seconds", ready.get("seconds", 0.0)) if first else 0.0
    return TrialResult(
        Outcome.OK,
        peak_vram_bytes=peak,
        load_seconds=float(value.get("load_seconds", shared_load)),
        wall_seconds=float(record["seconds"]),
        extra={**info.get("extra", {}), **value.get("extra", {})},
        **measured,
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure(
    timed_out: bool, deadline_s: float, stage: str, error: dict[str, Any] | None, returncode: int, tail: str
) -> TrialResult:
    if timed_out:
        outcome, summary = Outcome.TIMEOUT, f"{stage}: no result within the {deadline_s:g} s deadline; killed"
    else:
        if error is not None:
            how = error["error"]
        elif returncode < 0:
            how = f"killed by {_signal_name(-returncode)}"
        elif returncode > 0:
            how = f"exited with status {returncode}"
        else:
            how = "exited without reporting a result"
        outcome = Outcome.OOM if mentions_oom(f"{how}\n{tail}") else Outcome.CRASH
        summary = f"{stage}: {how}"
    return TrialResult(outcome, f"{tail}\n{summary}" if tail else summary)


def _run_child(
    target: str,
    common: dict[str, Any],
    items: list[dict[str, Any]],
    deadline_s: float,
    gpu: TrialGpu,
    sampler: Sampler,
) -> list[TrialResult]:
    """Results of a prefix of ``items`` (at least one): all of them, or up to the one that failed."""
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp:
        job, results_path, log_path = Path(tmp, "job.json"), Path(tmp, "results.jsonl"), Path(tmp, "child.log")
        job.write_text(json.dumps({"target": target, "common": common, "items": items}), encoding="utf-8")
        results_path.touch()
        lines = _Lines(results_path)
        done: list[TrialResult] = []
        ready: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        timed_out = False
        with sampler(gpu) as vram, log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "autotune.isolation.child_main", str(job), str(results_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_child_env(gpu),
            )
            try:
                vram.watch(process.pid)
                stage_started = time.monotonic()
                while True:
                    exited = process.poll() is not None
                    for record in lines.new():
                        stage_started = time.monotonic()
                        if record["kind"] == "ready":
                            ready = record
                        elif record["kind"] == "item":
                            done.append(_ok(record, ready or {}, vram.mark(), first=not done))
                        else:
                            error = record
                    if exited:
                        break
                    if time.monotonic() - stage_started > deadline_s:
                        timed_out = True
                        break
                    time.sleep(POLL_S)
            finally:
                _kill_group(process)
            stage_seconds = time.monotonic() - stage_started
            stage_peak = vram.peak if ready is None else vram.mark()
        if vram.lost:
            tail = _tail(log_path)
            lost = TrialResult(Outcome.GPU_LOST, f"{tail}\n{vram.lost}" if tail else vram.lost, wall_seconds=stage_seconds)
            return [replace(lost) for _ in items]
        if len(done) == len(items):
            return done
        stage = "setup" if ready is None else f"item {len(done) + 1} of {len(items)}"
        failure = _failure(timed_out, deadline_s, stage, error, process.returncode, _tail(log_path))
        failure.wall_seconds, failure.peak_vram_bytes = stage_seconds, stage_peak
        return done + [replace(failure) for _ in range(len(items) if ready is None else 1)]

"""Child side of the llama_bench engine: run llama-bench for one config and read its jsonl.

llama-bench runs as a grandchild in the trial's process group (so the VRAM sampler and a
timeout reach it); its log goes to the trial's log, whose tail the parent keeps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def setup(common: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Results name the binary, not its path: they are committed from other machines."""
    return common, {"load_seconds": 0.0, "extra": {"llama_bench": Path(common["binary"]).name}}


def _row(rows: list[dict[str, Any]], n_prompt: int, n_gen: int, n_threads: int) -> dict[str, Any]:
    for row in rows:
        if (row["n_prompt"], row["n_gen"], row["n_threads"]) == (n_prompt, n_gen, n_threads):
            return row
    raise RuntimeError(f"llama-bench reported no test with p={n_prompt} n={n_gen} t={n_threads}")


def run(common: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """``item``: argv (a llama-bench command with ``-o jsonl``), n_prompt, n_gen, n_threads,
    n_threads_batch. Prefill is read at n_threads_batch threads, decode at n_threads."""
    started = time.perf_counter()
    done = subprocess.run(item["argv"], stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        code = done.returncode
        how = f"killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        raise RuntimeError(f"llama-bench {how}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    value: dict[str, Any] = {}
    chosen = []
    if item["n_prompt"]:
        chosen.append(_row(rows, item["n_prompt"], 0, item["n_threads_batch"]))
        value["prefill_tps"] = chosen[-1]["samples_ts"]
    if item["n_gen"]:
        chosen.append(_row(rows, 0, item["n_gen"], item["n_threads"]))
        value["decode_tps"] = chosen[-1]["samples_ts"]
    measured = sum(sum(row["samples_ns"]) for row in rows) / 1e9
    value["load_seconds"] = max(0.0, wall - measured)  # loading, warm-up and contexts
    value["extra"] = {"llama_bench_build": f"{rows[0]['build_number']} ({rows[0]['build_commit']})",
                      "llama_bench_rows": [{key: row[key] for key in ("n_prompt", "n_gen", "n_threads", "avg_ts",
                                                                    "stddev_ts")} for row in chosen]}
    return value

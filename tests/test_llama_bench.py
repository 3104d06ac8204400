"""The llama_bench backend with the real llama-bench binary on the tiny synthetic model (CPU).

scripts/build-llama-cpp.sh builds llama-bench from the llama.cpp that llama-cpp-python vendors.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from autotune.backends.base import Outcome, Workload
from autotune.backends.llama_cpp.commands import bench_argv
from autotune.backends.llama_cpp.bench import LlamaBenchBackend, find_llama_bench

pytestmark = pytest.mark.skipif(
    find_llama_bench() is None, reason="no llama-bench binary (scripts/setup.sh builds one)"
)

WORKLOAD = Workload(n_prompt=32, n_gen=8, repetitions=2, n_ctx=256)


def test_an_ok_trial_reads_llama_bench_samples(tiny_model: Path):
    config = {"n_cpu_moe": 1, "n_threads": 1, "n_threads_batch": 2}
    result = LlamaBenchBackend().run_trial(config, tiny_model, WORKLOAD, deadline_s=120)
    assert result.outcome is Outcome.OK, result.message
    assert len(result.decode_tps.samples) == len(result.prefill_tps.samples) == 2
    rows = result.extra["llama_bench_rows"]
    assert [(r["n_prompt"], r["n_gen"], r["n_threads"]) for r in rows] == [(32, 0, 2), (0, 8, 1)]
    assert result.decode_tps.mean == pytest.approx(rows[1]["avg_ts"], rel=1e-3)
    assert result.load_seconds >= 0
    assert result.extra["llama_bench"] == "llama-bench"  # the name only: no machine's path in a result
    assert result.extra["llama_bench_build"].split()[0].isdigit()


def test_llama_bench_takes_every_knob_as_given(tiny_model: Path):
    config = {"n_gpu_layers": 3, "n_cpu_moe": 1, "cpu_moe_layers": [3], "flash_attn": True, "n_batch": 64,
              "n_ubatch": 32, "type_k": "q8_0", "type_v": "q4_0", "n_threads": 1, "op_offload": False,
              "use_mmap": False}
    argv = bench_argv(config, tiny_model, Workload(n_prompt=0, n_gen=4, repetitions=1), find_llama_bench())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["n_gpu_layers"], row["n_cpu_moe"], row["n_batch"], row["n_ubatch"]) == (3, 1, 64, 32)
    assert (row["type_k"], row["type_v"], row["flash_attn"], row["n_threads"]) == ("q8_0", "q4_0", 1, 1)
    assert (row["no_op_offload"], row["load_mode"]) == (1, "none")
    assert row["tensor_buft_overrides"] == r"blk\.3\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"


def test_failures_are_recorded(tiny_model: Path, tmp_path: Path):
    backend = LlamaBenchBackend()
    broken = tmp_path / "broken model.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    result = backend.run_trial({"n_threads": 1}, broken, WORKLOAD, deadline_s=120)
    assert result.outcome is Outcome.CRASH
    assert result.message.splitlines()[-1] == "item 1 of 1: RuntimeError: llama-bench exited with status 1"
    long = Workload(n_prompt=0, n_gen=3000, repetitions=5, n_ctx=4096)  # seconds of decoding
    (late,) = backend.run_trials([{"n_threads": 1}], tiny_model, long, deadline_s=0.5)
    assert late.outcome is Outcome.TIMEOUT and late.message.splitlines()[-1].startswith("item 1 of 1: no result")


def test_a_missing_binary_makes_the_backend_unavailable(tmp_path: Path):
    assert "no llama-bench executable" in LlamaBenchBackend(str(tmp_path / "llama-bench")).available()
    assert LlamaBenchBackend().available() is None


@pytest.mark.slow
def test_run_takes_llama_bench_from_an_option(tiny_model: Path, tmp_path: Path):
    """``--llama-bench PATH`` picks the binary: a 2-trial study of the llama_bench backend."""
    import sys

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    args = [sys.executable, "-m", "autotune.cli", "run", str(tiny_model), "--vram-cap", "4G", "--backends", "llama_bench",
            "--trials", "2", "--no-remeasure", "--prompt-tokens", "8", "--gen-tokens", "4", "--repetitions", "1",
            "--ctx", "64", "--storage", url]
    env = {k: v for k, v in __import__("os").environ.items() if k != "AUTOTUNE_LLAMA_BENCH"}
    wrapper, calls = tmp_path / "my bench", tmp_path / "calls.log"
    wrapper.write_text(f'#!/bin/sh\necho called >> "{calls}"\nexec "{find_llama_bench()}" "$@"\n')
    wrapper.chmod(0o755)
    done = subprocess.run([*args, "--llama-bench", str(wrapper)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "winner" in done.stdout
    assert calls.read_text().count("called") >= 2  # the study ran the given executable
    missing = subprocess.run([*args, "--llama-bench", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "not an executable file" in missing.stderr

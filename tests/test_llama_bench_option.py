"""The llama-bench executable reaches the llama_bench backend as a parameter: from ``--llama-bench``
(or ``$AUTOTUNE_LLAMA_BENCH``, read by the option) through the study to the workers' command
lines, never through this process's environment."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from autotune.backends.llama_cpp.bench import LlamaBenchBackend
from autotune.backends.registry import get_backend
from autotune.cli import app
from autotune.isolation.gpu import TrialGpu
from autotune.search import actions, workers

runner = CliRunner()


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """An executable that stands for llama-bench (never run here)."""
    path = tmp_path / "my bench"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What ``run`` and ``worker`` hand to the study, instead of running one."""
    seen: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(actions, "run_study", lambda request, *args, **kwargs: seen.setdefault("run", vars(request)))
    monkeypatch.setattr(workers, "join_study", lambda *args: seen.setdefault("worker", {"args": args}))
    monkeypatch.delenv("AUTOTUNE_LLAMA_BENCH", raising=False)
    return seen


def test_run_and_worker_pass_the_executable_and_leave_the_environment(tiny_model: Path, bench: Path, calls):
    before = dict(os.environ)
    done = runner.invoke(app, ["run", str(tiny_model), "--vram-cap", "4G", "--backends", "llama_bench",
                               "--llama-bench", str(bench)])
    assert done.exit_code == 0, done.output
    joined = runner.invoke(app, ["worker", str(tiny_model), "--study", "s", "--llama-bench", str(bench)])
    assert joined.exit_code == 0, joined.output
    assert dict(os.environ) == before
    assert calls["run"]["llama_bench"] == str(bench.resolve())
    assert calls["worker"]["args"][-1] == str(bench.resolve())


def test_the_environment_variable_is_read_by_the_option(tiny_model: Path, bench: Path, calls):
    done = runner.invoke(app, ["run", str(tiny_model), "--vram-cap", "4G"], env={"AUTOTUNE_LLAMA_BENCH": str(bench)})
    assert done.exit_code == 0, done.output
    assert calls["run"]["llama_bench"] == str(bench.resolve())
    plain = runner.invoke(app, ["worker", str(tiny_model), "--study", "s"])
    assert plain.exit_code == 0 and calls["worker"]["args"][-1] is None


def test_a_path_that_is_no_executable_is_a_clear_error(tiny_model: Path, tmp_path: Path, calls):
    for args in (["run", str(tiny_model), "--vram-cap", "4G"], ["worker", str(tiny_model), "--study", "s"]):
        done = runner.invoke(app, [*args, "--llama-bench", str(tmp_path / "nope")])
        assert done.exit_code == 2 and "not an executable file" in done.output
    assert not calls


def test_the_backend_and_the_workers_get_the_executable(tiny_model: Path, bench: Path):
    from autotune.model_info import inspect_model

    before = dict(os.environ)
    [backend] = actions._usable_backends(["llama_bench"], inspect_model(tiny_model), str(bench.resolve()), TrialGpu("1"))
    assert isinstance(backend, LlamaBenchBackend) and backend.gpu == TrialGpu("1")
    assert backend.load_job({}, tiny_model)["binary"] == str(bench.resolve())
    assert get_backend("llama_bench").binary is None  # without one it finds its own
    assert dict(os.environ) == before
    tuner = SimpleNamespace(study_name="s", db=SimpleNamespace(url="sqlite://"))
    command = workers._worker_command(tiny_model, tuner, None, str(bench))
    assert command[command.index("--llama-bench") + 1] == str(bench)
    assert "--llama-bench" not in workers._worker_command(tiny_model, tuner, None, None)

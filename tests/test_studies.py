"""Studies end to end on CPU: a tiny study run with `autotune study run`, stopped by --time and
resumed (no part run twice), then `autotune report`; and the grid continuing from its saved rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from autotune.backends.base import Measurement, Outcome, TrialResult, Workload
from tests.fake_backend import FakeBackend
from autotune.errors import AutotuneError
from autotune.studies.definition import GridSpec, load_definition
from autotune.studies.fixed_configs import run_grid
from autotune.studies.plan import plan

ROOT = Path(__file__).resolve().parents[1]

TINY_STUDY = """
description = "the tiny preset on CPU"
caps = ["523M", "1G"]
backends = ["llama_cpp"]

[model]
preset = "tiny"
skews = [1]

[workload]
prompt_tokens = 16
gen_tokens = 8
repetitions = 2
ctx = 64

[tuner]
trials = 3
remeasure = false
trial_timeout = "1m"

[baselines]
n_cpu_moe_span = 2

[grid]
fixed = { n_gpu_layers = 99 }
axes = { n_cpu_moe = [0, 4], n_threads = [1, 2] }
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _results(study: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((study / "results").glob("*"))}


@pytest.mark.slow
def test_tiny_study_runs_in_two_calls_and_reports(tmp_path: Path):
    pytest.importorskip("llama_cpp")
    study, models = tmp_path / "tiny_cpu", tmp_path / "models"
    study.mkdir()
    (study / "study.toml").write_text(TINY_STUDY)
    parts = [p.name for p in plan(load_definition(study))]
    assert parts == ["skew1-523M-baselines", "skew1-523M-tuner-llama_cpp", "skew1-1G-baselines",
                     "skew1-1G-tuner-llama_cpp", "skew1-grid"]

    first = _cli("study", "run", str(study), "--time", "1s", "--models", str(models))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "time is up" in first.stdout
    after_first = _results(study)
    assert list(after_first) == ["skew1-523M-baselines.json"]  # a call runs at least one part, then stops

    second = _cli("study", "run", str(study), "--models", str(models))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 done earlier, 4 to run" in second.stdout
    after_second = _results(study)
    assert sorted(after_second) == sorted(f"{p}.json" for p in parts)
    assert after_second["skew1-523M-baselines.json"] == after_first["skew1-523M-baselines.json"]  # not run again

    third = _cli("study", "run", str(study), "--models", str(models))
    assert third.returncode == 0 and "0 to run" in third.stdout
    assert _results(study) == after_second

    tuner = json.loads(after_second["skew1-1G-tuner-llama_cpp.json"])
    assert tuner["command"].startswith("autotune run tiny-q4_k_m-static-skew1-seed0.gguf --vram-cap 1G --backends llama_cpp --trials 3")
    assert tuner["machine"]["fingerprint"] and tuner["model"]["synth_command"].startswith("autotune synth")
    assert len([t for t in tuner["trials"] if t["outcome"] != "pruned"]) == 3 and tuner["winner"]["decode"]["mean"] > 0
    grid = json.loads(after_second["skew1-grid.json"])
    assert [r["config"]["n_cpu_moe"] for r in grid["rows"]] == [0, 0, 4, 4]
    baselines = json.loads(after_second["skew1-523M-baselines.json"])
    assert baselines["baselines"]["all_gpu"]["row"] is None  # predicted over 523M
    assert str(models) not in json.dumps([json.loads(b) for b in after_second.values()])  # no machine paths

    report = _cli("report", str(study))
    assert report.returncode == 0, report.stdout + report.stderr
    text = (study / "report.md").read_text()
    assert "| cap | series | decode tok/s | prefill tok/s |" in text
    for line in ("| 523M | llama_cpp (tuner) |", "| 1G | grid's best |", "| 523M | all on GPU | — |",
                 "| 1G | all experts on CPU |", "| 523M | 2 |"):  # the 523M grid: the 2 configs predicted within it
        assert line in text, line
    assert "autotune study run studies/tiny_cpu && autotune report studies/tiny_cpu" in text
    assert "cache.png" not in text  # no cache results, no cache figure
    for name in ("speed-skew1.png", "convergence-skew1.png"):
        assert f"]({name})" in text
        with Image.open(study / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 500


class _CountingBackend(FakeBackend):
    """Measures nothing: records which configs it was asked to run."""

    name = "counting"

    def __init__(self) -> None:
        self.ran: list[dict] = []

    def predict_vram(self, config, model, workload) -> int:
        return config["x"] * 2**30

    def run_trial(self, config, model_path, workload, deadline_s) -> TrialResult:
        self.ran.append(config)
        return TrialResult(Outcome.OK, decode_tps=Measurement.of([10.0 + config["x"], 11.0 + config["x"]]))

    def launch_command(self, config, model_path, fmt) -> str:
        return f"run {model_path} x={config['x']}"


def test_grid_stops_for_time_and_continues_from_its_saved_rows():
    spec = GridSpec(backend="counting", axes={"x": [1, 2, 3, 9, 4]}, fixed={})
    backend, saved = _CountingBackend(), []
    clock = iter([100.0, 0.0])  # time left before the 2nd and 3rd configs: enough once, then none
    rows, complete = run_grid(backend, None, Path("m.gguf"), Workload(), spec, 4 * 2**30, 60.0, [],
                              lambda: next(clock), saved.append)
    assert not complete and [r["config"]["x"] for r in rows] == [1, 2]
    rows, complete = run_grid(backend, None, Path("m.gguf"), Workload(), spec, 4 * 2**30, 60.0, saved[-1],
                              lambda: 0.0, saved.append)  # a call with no time left still measures one row
    assert not complete and [r["config"]["x"] for r in rows] == [1, 2, 3, 9]
    rows, complete = run_grid(backend, None, Path("m.gguf"), Workload(), spec, 4 * 2**30, 60.0, rows,
                              lambda: 100.0, saved.append)
    assert complete and [r["outcome"] for r in rows] == ["ok", "ok", "ok", "skipped", "ok"]  # 9 GiB > 4 GiB cap
    assert [c["x"] for c in backend.ran] == [1, 2, 3, 4]  # no config measured twice
    assert rows[0]["objective"]["mean"] == 11.5 and rows[0]["command"] == "run m.gguf x=1"

    changed = GridSpec(backend="counting", axes={"x": [5, 2, 3, 9, 4]}, fixed={})
    with pytest.raises(AutotuneError, match="do not match"):
        run_grid(backend, None, Path("m.gguf"), Workload(), changed, 4 * 2**30, 60.0, rows[:2], lambda: 100.0,
                 saved.append)


@pytest.mark.parametrize("text, message", [
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"\nskew = [0]', r"unknown key\(s\) skew"),
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"\npath = "m.gguf"', "either preset"),
    ('caps = ["8X"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"', "cannot read the size"),
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"\n[tuner]\nsampler = "tpe"', "trials, minutes"),
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "huge"', "unknown preset"),
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"\nrouting = "bursty"', "routing must be one of"),
    ('caps = ["8G"]\nbackends = ["llama_cpp"]\n[model]\npath = "m.gguf"\nrouting = "static"', "synthesized preset only"),
])
def test_bad_definitions_are_one_line_errors(tmp_path: Path, text: str, message: str):
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(AutotuneError, match=message):
        load_definition(tmp_path)


def test_a_tuner_part_that_cannot_start_records_why(tiny_model: Path, tmp_path: Path):
    pytest.importorskip("llama_cpp")
    from rich.console import Console

    from autotune.studies.tuner_part import run_tuner_part

    (tmp_path / "study.toml").write_text(f'caps = ["1M"]\nbackends = ["llama_cpp"]\n[model]\npath = "{tiny_model}"\n')
    definition = load_definition(tmp_path)
    [part] = plan(definition)
    record = run_tuner_part(definition, part, tiny_model, Console(quiet=True))
    assert "below the smallest config" in record["error"] and record["winner"] is None
    assert record["command"].startswith("autotune run tiny.gguf --vram-cap 1M --backends llama_cpp --trials 20")


def test_a_results_commit_says_when_the_package_differs_from_it(monkeypatch: pytest.MonkeyPatch):
    from autotune.studies import runner

    answers = {("rev-parse", "--short", "HEAD"): "abc1234",
               ("status", "--porcelain", "--untracked-files=no", "."): " M autotune/cli.py"}
    monkeypatch.setattr(runner, "_git", lambda *args: answers.get(args))
    assert runner._commit() == "abc1234+changes"
    answers[("status", "--porcelain", "--untracked-files=no", ".")] = ""
    assert runner._commit() == "abc1234"
    answers.clear()
    assert runner._commit() is None
    monkeypatch.setenv("AUTOTUNE_COMMIT", "def5678")  # a copy of the code, named by whoever copied it
    assert runner._commit() == "def5678"


def test_parts_run_in_the_order_the_definition_lists_its_caps(tmp_path: Path):
    (tmp_path / "study.toml").write_text('caps = ["16G", "8G"]\nbackends = ["llama_cpp"]\n[model]\npreset = "tiny"\n')
    definition = load_definition(tmp_path)
    assert definition.caps == (8 * 2**30, 16 * 2**30)
    assert [part.name for part in plan(definition)] == ["skew1-16G-tuner-llama_cpp", "skew1-8G-tuner-llama_cpp"]


def test_a_part_that_cannot_start_yet_gives_way_to_later_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With less time left than a tuner part's minutes, the call runs the shorter parts after it
    (the next cap's baselines) instead of stopping; each part here takes 50 s of a 100 s budget."""
    from types import SimpleNamespace

    from rich.console import Console

    from autotune.studies import runner

    (tmp_path / "study.toml").write_text(TINY_STUDY.replace("trials = 3", "trials = 3\nminutes = 1"))
    monkeypatch.setattr(runner, "get_backend", lambda name: SimpleNamespace(available=lambda: None))
    monkeypatch.setattr(runner, "probe_hardware", lambda: None)
    monkeypatch.setattr(runner, "describe_machine", lambda hardware: {"fingerprint": "m"})
    call = runner.StudyRunner(tmp_path, 100.0, None, Console(quiet=True))
    used, ran = [0.0], []
    monkeypatch.setattr(call, "time_left", lambda: 100.0 - used[0])

    def run_part(part, hardware, machine, existing):
        ran.append(part.name)
        used[0] += 50.0
        return {"part": part.name, "machine": machine}

    monkeypatch.setattr(call, "_run_part", run_part)
    summary = call.run()
    assert ran == ["skew1-523M-baselines", "skew1-1G-baselines"]  # each tuner part needs 60 s
    assert (summary.ran, summary.left) == (2, 3)
    assert sorted(p.name for p in (tmp_path / "results").glob("*.json")) == [f"{name}.json" for name in sorted(ran)]

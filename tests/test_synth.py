import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.cli import app
from autotune.model_info import inspect_model
from autotune.synth import PRESETS, real_routing, write_synthetic_model

runner = CliRunner()


def test_inspect_json_reports_what_was_written(tiny_model: Path):
    result = runner.invoke(app, ["inspect", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    preset = PRESETS["tiny"]
    assert data["architecture"] == "qwen3moe"
    assert data["n_layers"] == preset.n_layers
    assert data["n_expert"] == preset.n_expert
    assert data["n_expert_used"] == preset.n_expert_used
    assert data["n_ff_expert"] == preset.n_ff_expert
    assert data["n_vocab"] == preset.n_vocab
    groups = data["token_embd_bytes"] + data["output_bytes"]
    groups += sum(sum(v for v in layer.values()) for layer in data["layers"])
    assert groups == data["tensor_data_bytes"]
    assert data["expert_bytes"] * preset.n_expert == data["layers"][0]["experts"]
    assert data["quant_types"].keys() == {"Q4_K", "Q6_K", "F32"}


def test_the_file_is_on_disk_before_it_takes_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    synced: list[tuple[str, int, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((name, os.fstat(fd).st_size, (tmp_path / "m.gguf").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    report = write_synthetic_model(tmp_path / "m.gguf", preset="tiny")
    assert synced == [(str(tmp_path / "m.gguf.partial"), report.file_bytes, False)]


def test_fingerprint_is_stable_and_tracks_content(tiny_model: Path, tmp_path: Path):
    assert inspect_model(tiny_model).fingerprint == inspect_model(tiny_model).fingerprint
    other = tmp_path / "other.gguf"
    write_synthetic_model(other, preset="tiny", seed=0, skew=0.5)
    assert inspect_model(other).fingerprint != inspect_model(tiny_model).fingerprint


def test_llama_cpp_loads_and_generates_32_tokens(tiny_model: Path):
    pytest.importorskip("llama_cpp")
    script = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, verbose=False, seed=1)\n"
        "out = llm.create_completion('the people', max_tokens=32, temperature=0.0)\n"
        "print(out['usage']['completion_tokens'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 32


def _measured_routing(path: Path, n_tokens: int, figures: str):
    """``figures`` (a Python expression of ``trace``) of the file's routing, measured through
    llama.cpp in a child process (llama_cpp stays out of the test process)."""
    script = (
        "import sys, json\nfrom autotune.measured_routing import measure_routing\n"
        f"trace = measure_routing(sys.argv[1], n_tokens={n_tokens})\n"
        f"print(json.dumps({figures}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("skew, low, high", [(1.0, 0.0, 0.15), (0.0, 0.25, 0.5)])
def test_static_routing_skew_is_measured_in_the_file(tmp_path: Path, skew: float, low: float, high: float):
    pytest.importorskip("llama_cpp")
    path = tmp_path / "small.gguf"
    write_synthetic_model(path, preset="small", skew=skew, routing="static")
    measured = _measured_routing(path, 512, "trace.held_out_miss_rate()")
    assert low <= measured <= high


def test_default_routing_meets_the_real_model_figures_measured_in_llama_cpp(tmp_path: Path):
    """The bar of issue 30 on the small preset, scaled to its 32 experts, top-4 (real_routing)."""
    pytest.importorskip("llama_cpp")
    path = tmp_path / "small.gguf"
    write_synthetic_model(path, preset="small")
    measured = _measured_routing(path, 1024, "{'share': trace.top_share().tolist(), 'overlap': trace.adjacent_overlap(),"
                                             " 'lru': list(trace.lru_hit_rates().values())}")
    low, high = real_routing.TOP_SHARE_BAND
    assert all(low <= share <= high for share in measured["share"]), measured
    assert real_routing.ADJACENT_OVERLAP[0] - 0.05 <= measured["overlap"] <= real_routing.ADJACENT_OVERLAP[1] + 0.05
    assert measured["lru"] == pytest.approx(list(real_routing.LRU_HIT), abs=0.05), measured


def test_synth_cli_writes_and_reports(tmp_path: Path):
    out = tmp_path / "dir with space" / "t.gguf"
    result = runner.invoke(app, ["synth", str(out), "--preset", "tiny", "--no-measure"])
    assert result.exit_code == 0, result.output
    assert out.exists() and not out.with_name("t.gguf.partial").exists()


def test_synth_layers_cuts_the_preset_and_keeps_its_shape(tmp_path: Path, tiny_model: Path):
    out = tmp_path / "cut.gguf"
    result = runner.invoke(app, ["synth", str(out), "--preset", "tiny", "--layers", "2", "--no-measure"])
    assert result.exit_code == 0, result.output
    assert "cut to 2 layers" in result.output
    cut, full = inspect_model(out), inspect_model(tiny_model)
    assert cut.n_layers == 2 and full.n_layers == PRESETS["tiny"].n_layers
    assert (cut.n_embd, cut.n_expert, cut.n_ff_expert, cut.expert_bytes) == \
        (full.n_embd, full.n_expert, full.n_ff_expert, full.expert_bytes)
    assert sorted({t.name.split(".")[1] for t in cut.tensors if t.name.startswith("blk.")}) == ["0", "1"]


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset"),
    (["--quant", "q3_x"], "unknown quantization"),
    (["--skew", "-1"], "--skew must be 0 or more"),
    (["--routing", "bursty"], "unknown routing 'bursty'"),
    (["--routing", "temporal"], "temporal routing needs 32 experts or more"),  # tiny has 16
    (["--preset", "mixtral-tiny", "--routing", "temporal"], "preset mixtral-tiny has 8"),
    (["--layers", "0"], "--layers must be 1 to 4 for preset tiny"),
    (["--layers", "5"], "--layers must be 1 to 4 for preset tiny"),
])
def test_synth_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str):
    result = runner.invoke(app, ["synth", str(tmp_path / "x.gguf"), "--no-measure", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where, message", [
    ("folder", "it is a folder; name the .gguf file to write"),
    ("a-file/x.gguf", "a-file is a file, not a folder"),
    ("/proc/x.gguf", "no new file can be made in /proc"),
])
def test_synth_to_a_path_it_cannot_write_is_one_line_before_any_work(tmp_path: Path, where: str, message: str):
    if where.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["synth", str(tmp_path / where), "--no-measure"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()][0].startswith("error: cannot write")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no .partial left

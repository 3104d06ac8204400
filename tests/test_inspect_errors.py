from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.cli import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_not_a_gguf(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world, not a model")
    assert "not a GGUF file" in _error(["inspect", str(path)])


def test_missing_file(tmp_path: Path):
    assert "no such file" in _error(["inspect", str(tmp_path / "nope.gguf")])


def test_directory(tmp_path: Path):
    assert "not a regular file" in _error(["inspect", str(tmp_path)])


@pytest.mark.parametrize("keep", [0.5, 0.9999, 40 / 9_102_208])
def test_truncated_gguf(tiny_model: Path, tmp_path: Path, keep: float):
    data = tiny_model.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    assert "truncated" in _error(["inspect", str(cut)])


def test_dense_model_reports_no_experts(dense_model: Path):
    result = runner.invoke(app, ["inspect", str(dense_model)])
    assert result.exit_code == 0, result.output
    assert "no experts" in result.output


def test_odd_path_characters(tiny_model: Path, tmp_path: Path):
    odd = tmp_path / "mödel 'quoted' \"x\" $(rm -rf) ;.gguf"
    odd.write_bytes(tiny_model.read_bytes())
    result = runner.invoke(app, ["inspect", str(odd), "--json"])
    assert result.exit_code == 0, result.output

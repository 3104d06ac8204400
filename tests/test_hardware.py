import json

from typer.testing import CliRunner

from autotune.cli import app
from autotune.hardware import probe_hardware


def test_probe_reports_cpu_and_gpu_state():
    profile = probe_hardware()
    assert profile.physical_cores >= 1 and profile.ram_bytes > 0
    assert profile.has_gpu or profile.gpu_error
    assert profile.fingerprint == probe_hardware().fingerprint


def test_hw_cli_json():
    result = CliRunner().invoke(app, ["hw", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["fingerprint"]) == 16
    if not data["gpus"]:
        human = CliRunner().invoke(app, ["hw"])
        assert "no GPU" in human.output

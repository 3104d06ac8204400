"""The product's main job on CPU: a real llama.cpp study of the tiny model, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.backends.llama_cpp.commands import parse_command
from autotune.backends.llama_cpp.knobs import LOAD_KEYS
from autotune.search.records import TrialRecord
from autotune.storage import Database

pytest.importorskip("llama_cpp")
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_six_trial_study_stores_best_and_exports_it(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    done = _cli("run", str(tiny_model), "--vram-cap", "4G", "--trials", "6", "--storage", url, "--seed", "0",
                "--prompt-tokens", "16", "--gen-tokens", "8", "--repetitions", "2", "--ctx", "64", "--study", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "winner" in done.stdout
    [best] = Database(url).best_configs(Database(url).studies()[0].model_fingerprint)
    assert best.backend == "llama_cpp" and best.objective_mean > 0
    # the finalists' llama-server commands were served as printed and measured over HTTP
    assert done.stdout.count("serving llama_cpp as exported: llama-server -m") >= 1
    served = best.result["served"]
    assert served["decode_tps"]["mean"] > 0 and len(served["decode_tps"]["samples"]) == 2
    assert f"served: decode {served['decode_tps']['mean']:.1f}" in " ".join(done.stdout.split())
    _check_siblings_shared_a_load(url)

    answer = _cli("best", str(tiny_model), "--storage", url, "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)[0]["config"] == best.config

    for fmt in ("llama-server", "llama-bench", "python", "json"):
        exported = _cli("export", str(tiny_model), "--vram-cap", "4G", "--format", fmt, "--storage", url)
        assert exported.returncode == 0, exported.stderr
        config, path = parse_command(exported.stdout.strip())
        assert path == tiny_model
        if fmt != "llama-bench":  # llama-bench has no -c: it sizes the context itself
            assert config == best.config, fmt


def test_export_without_a_study_is_a_clear_error(tiny_model: Path, tmp_path: Path):
    done = _cli("export", str(tiny_model), "--vram-cap", "4G", "--storage", f"sqlite:///{tmp_path / 'empty.db'}")
    assert done.returncode == 2
    assert "run `autotune run` first" in done.stderr


def _check_siblings_shared_a_load(url: str) -> None:
    """With the default batch of 2, a sampled trial's sibling reused its loaded model."""
    import optuna

    study = optuna.load_study(study_name="ci", storage=Database(url).optuna_storage())
    trials = {t.number: TrialRecord.from_trial(t) for t in study.get_trials()}
    siblings = [t for t in trials.values() if (t.seeded or "").startswith("shares the model load")]
    assert siblings, "no trial shared a model load"
    for sibling in siblings:
        lead = trials[int(sibling.seeded.rsplit(" ", 1)[1])]
        assert all(sibling.config[key] == lead.config[key] for key in LOAD_KEYS if key in lead.config)
        assert sibling.result.load_seconds == 0.0
        assert lead.result.load_seconds > 0

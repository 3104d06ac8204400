"""The tuner on every family the runtime runs: a short study of a tiny file of each measures
both backends, llama.cpp and the cache runtime, to completed trials (on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autotune.backends.base import Outcome
from autotune.search.records import TrialRecord
from autotune.storage import Database
from autotune.synth import write_synthetic_model

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["qwen2moe-tiny", "glm4moe-tiny", "deepseek2-tiny", "mixtral-tiny"])
def test_a_short_study_completes_trials_of_both_backends(preset: str, tmp_path: Path, own_data_dir: None):
    import optuna

    model = tmp_path / f"{preset}.gguf"
    write_synthetic_model(model, preset=preset, quant="ud-q2_k_xl", seed=0)
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "run", str(model), "--backends", "llama_cpp,cache", "--vram-cap", "2G",
         "--trials", "4", "--no-remeasure", "--no-verify", "--storage", url, "--study", "ci", "--prompt-tokens", "8",
         "--gen-tokens", "4", "--repetitions", "2", "--ctx", "64"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="ci", storage=Database(url).optuna_storage())
    records = [TrialRecord.from_trial(trial) for trial in study.get_trials()]
    completed = {record.backend for record in records if record.outcome is Outcome.OK and record.objective > 0}
    assert completed == {"llama_cpp", "cache"}, [(r.backend, r.outcome, r.message) for r in records]

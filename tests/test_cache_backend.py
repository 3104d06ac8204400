"""The ``cache`` backend on CPU (tiny preset): what it accepts, its search space, VRAM
prediction, trials in a child with the cache's statistics, and a whole study whose winner
exports as an ``autotune serve`` command that runs that same config."""

from __future__ import annotations

import dataclasses

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from autotune.backends.base import Outcome, Workload
from autotune.backends.cache.backend import CacheBackend
from autotune.backends.cache.commands import parse_command
from autotune.backends.cache.knobs import DEFAULTS, cache_config, normalize
from autotune.cache_runtime.budget import model_sizes, plan_with_slots, predict_peak_vram
from autotune.cache_runtime.cache_config import CPU_THREAD_CHOICES
from autotune.cache_runtime.learned import counts_path, model_fingerprint, save_counts
from autotune.cli import app
from autotune.hardware import probe_hardware
from autotune.model_info import inspect_model
from autotune.storage import Database
from autotune.units import size_text

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = Workload(n_prompt=8, n_gen=4, repetitions=2, n_ctx=64)


@pytest.fixture(scope="module")
def cap(tiny_model: Path) -> int:
    """The tiny model's fixed need (CUDA context and margin included) and half its experts."""
    return plan_with_slots(model_sizes(tiny_model), cache_config({"vram_cap": 1, "max_ctx": 64}), 32).peak


@pytest.fixture(autouse=True)
def own_store_and_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Trial children inherit all: the user's store and the trials' store of this test, and one
    torch thread each (the CPU path dequantizes experts per step; threads fighting over CI's
    cores only slow it down)."""
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AUTOTUNE_TRIAL_STORE", str(tmp_path / "trial store"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_supports_moe_models_the_runtime_runs_and_declines_dense_ones(tiny_model: Path, dense_model: Path):
    backend = CacheBackend()
    assert backend.available() is None
    assert backend.supports(inspect_model(tiny_model)) is None
    assert backend.supports(inspect_model(dense_model)) == "a dense model has no routed experts: nothing to cache"


def test_declines_a_model_with_a_weight_type_the_runtime_cannot_read(tiny_model: Path):
    profile = inspect_model(tiny_model)
    iq3 = dataclasses.replace(profile, quant_types={**profile.quant_types, "TQ1_0": 1024})
    reason = CacheBackend().supports(iq3)
    assert reason is not None and reason.startswith("the runtime has no kernels for GGML type TQ1_0 (it reads F32,")


def test_cli_names_the_reason_a_dense_model_is_declined(dense_model: Path, tmp_path: Path):
    done = CliRunner().invoke(app, ["run", str(dense_model), "--backends", "cache", "--vram-cap", "1G",
                                    "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert done.exit_code == 2
    assert "cache: a dense model has no routed experts" in done.output


def test_the_space_samples_every_knob_and_leaves_moot_ones_alone(tiny_model: Path, cap: int):
    backend, model, hw = CacheBackend(), inspect_model(tiny_model), probe_hardware()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set] = {}
    for objective in ("decode", "prefill"):
        workload = Workload(n_ctx=2048, objective=objective)
        for _ in range(120):
            trial = study.ask()
            config = backend.fill_cap(backend.suggest(trial, model, hw, workload), cap)
            assert config == normalize(config) and config["vram_cap"] == cap and config["max_ctx"] == 2048
            if config["eviction"] == "static":
                assert not {"rebalance_interval", "decay"} & set(trial.params)  # the miss mode matters
            if config["miss_mode"] not in ("cpu", "auto"):
                assert not {"cpu_threads", "cpu_repack"} & set(trial.params)
            if config["miss_mode"] == "cpu":
                assert "prefetch_depth" not in trial.params and config["prefetch_depth"] == 0
            if config["prefetch_depth"] == 0:
                assert "prefetch_engine" not in trial.params and config["prefetch_engine"] == "sm"
            if not config["learned_placement"]:
                assert "slot_split" not in trial.params and config["slot_split"] == 0.0
            if objective == "decode":
                assert config["prefill_bypass"] == DEFAULTS["prefill_bypass"]
            for key, value in config.items():
                seen.setdefault(key, set()).add(value)
            study.tell(trial, 0.0)
    assert seen["eviction"] == {"static", "lfu_decay", "lru"} and seen["miss_mode"] == {"zero_copy", "copy", "cpu", "auto"}
    assert seen["prefetch_depth"] == {0, 1, 2, 3, 4} and seen["prefetch_engine"] == {"sm", "dma"}
    assert seen["slot_split"] == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len(seen["prefill_bypass"]) > 1 and len(seen["decay"]) > 1 and len(seen["rebalance_interval"]) > 1
    assert seen["chunk_rounds"] == {1, 2} and seen["gate_up_warps"] == {4, 8}
    assert seen["int8_inputs"] == {False, True}
    assert seen["lend_prefill_room"] == {False, True} and seen["prefill_chunk"] == {DEFAULTS["prefill_chunk"]}
    assert seen["cpu_threads"] == set(CPU_THREAD_CHOICES) | {1} and seen["cpu_repack"] == {False, True}


@pytest.mark.parametrize("ggml_has_the_activation", [True, False])
def test_experts_ggml_cannot_compute_are_never_given_to_the_cpu(tmp_path: Path, cap: int,
                                                               ggml_has_the_activation: bool,
                                                               monkeypatch: pytest.MonkeyPatch):
    """gpt-oss's experts (biases, the clamped SwiGLU) are computed by ggml's CPU experts, so the
    CPU miss modes are sampled and seeded for them; were the activation one ggml's graph lacks,
    no CPU miss mode would be sampled or offered as a baseline (each such trial would fail)."""
    from autotune.synth import write_synthetic_model

    if not ggml_has_the_activation:
        monkeypatch.setattr("autotune.cache_runtime.support.CPU_ACTIVATIONS", ("silu",))
    path = tmp_path / "gpt-oss-tiny.gguf"
    write_synthetic_model(path, preset="gpt-oss-tiny", seed=0)
    backend, model, hw = CacheBackend(), inspect_model(path), probe_hardware()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    workload = Workload(n_ctx=2048)
    modes = {backend.suggest(study.ask(), model, hw, workload).get("miss_mode", DEFAULTS["miss_mode"])
             for _ in range(60)}
    cpu_modes = {"cpu", "auto"}
    assert modes == {"zero_copy", "copy"} | (cpu_modes if ggml_has_the_activation else set())
    seeded = {c["miss_mode"] for c in backend.baselines(model, hw, cap, workload)}
    assert bool(seeded & cpu_modes) == ggml_has_the_activation


def test_baselines_lie_in_the_space_and_fit_the_cap(tiny_model: Path, cap: int):
    """Seeded into a study, each baseline comes back as itself through suggest + fill_cap."""
    backend, model, hw = CacheBackend(), inspect_model(tiny_model), probe_hardware()
    baselines = backend.baselines(model, hw, cap, WORKLOAD)
    assert {(c["eviction"], c["prefetch_depth"], c["prefetch_engine"]) for c in baselines} == {
        ("static", 0, "sm"), ("static", 2, "sm"), ("lfu_decay", 3, "sm"), ("lfu_decay", 4, "dma"), ("lfu_decay", 0, "sm")}
    assert [c["miss_mode"] for c in baselines] == ["zero_copy"] * 4 + ["cpu"] * 2
    assert [c["slot_layout"] for c in baselines] == ["spread"] * 5 + ["whole_layers"]
    assert [c["pcie_share"] for c in baselines] == [0.0] * 5 + [0.375]
    study = optuna.create_study()
    for config in baselines:
        study.enqueue_trial(config)
        trial = study.ask()
        assert backend.fill_cap(backend.suggest(trial, model, hw, WORKLOAD), cap) == config
        study.tell(trial, 0.0)
        assert backend.predict_vram(config, model, WORKLOAD) <= cap


def test_vram_prediction_is_the_runtimes_plan_and_a_cap_too_small_is_over_it(tiny_model: Path, cap: int):
    backend, model = CacheBackend(), inspect_model(tiny_model)
    config = {"vram_cap": cap, "prefetch_depth": 1}
    assert backend.predict_vram(config, model, WORKLOAD) == predict_peak_vram(
        tiny_model, cache_config({**config, "max_ctx": WORKLOAD.n_ctx}))
    small = {"vram_cap": 700 * 2**20}
    fixed_need = plan_with_slots(model_sizes(tiny_model), cache_config({**small, "max_ctx": 64}), 0).peak
    assert backend.predict_vram(small, model, WORKLOAD) == fixed_need > small["vram_cap"]


@pytest.mark.slow
def test_trials_share_one_load_and_report_the_cache_statistics(tiny_model: Path, cap: int, tmp_path: Path):
    backend = CacheBackend()
    configs = [{"vram_cap": cap, "eviction": "static"},
               {"vram_cap": cap, "eviction": "lru", "miss_mode": "copy", "rebalance_interval": 16, "prefetch_depth": 1}]
    results = backend.run_trials(configs, tiny_model, WORKLOAD, deadline_s=300)
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK], [r.message for r in results]
    first, second = results
    assert first.load_seconds > 0 and second.load_seconds == 0  # one child loaded the model once
    setup = first.extra["model_load_seconds"], first.extra["placement_seconds"]  # the load, timed in parts
    assert min(setup) > 0 and sum(setup) <= first.load_seconds
    for result in results:
        assert len(result.decode_tps.samples) == len(result.prefill_tps.samples) == WORKLOAD.repetitions
        assert result.decode_tps.mean > 0 and result.prefill_tps.mean > 0
        assert result.peak_vram_bytes is None  # CPU
        assert 0 < result.extra["hit_rate"] < 1 and result.extra["pcie_bytes_per_token"] > 0
        assert result.extra["total_slots"] < 4 * 16
        for key in ("effective_hit_rate", "prefetch_precision", "prefetch_recall", "rebalances", "host_wait_s"):
            assert key in result.extra
    assert first.extra["prefetch_precision"] is None and second.extra["prefetch_precision"] is not None
    assert first.extra["admissions"] == 0 and second.extra["admissions"] > 0  # copy mode brings misses in
    assert second.extra["effective_hit_rate"] >= second.extra["hit_rate"]
    # no counts stored for the model: the child learned them into the trials' store, not the user's
    assert {r.extra["routing_counts"] for r in results} == {"learned in the trial"}
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.npy"))
    assert len(list((tmp_path / "trial store").rglob("*.json"))) == 1
    [later] = backend.run_trials(configs[:1], tiny_model, WORKLOAD, deadline_s=300)  # a new child
    assert later.outcome is Outcome.OK and later.extra["routing_counts"] == "learned by an earlier trial"


def test_a_trial_child_reads_the_gguf_header_once(tiny_model: Path, cap: int, monkeypatch: pytest.MonkeyPatch):
    """Config, sizes, fingerprint and tensors all come from one read (a large vocabulary
    makes each read take seconds): the child's setup, learning its placement included."""
    import gguf

    from autotune import model_info as model_module
    from autotune.backends.cache import trial as cache_trial
    from autotune.cache_runtime import budget

    reads: list[str] = []
    read = gguf.GGUFReader.__init__

    def counted(reader, path, *rest) -> None:
        reads.append(str(path))
        read(reader, path, *rest)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counted)
    model_module._reader.cache_clear()
    budget._model_sizes.cache_clear()
    config = normalize({"vram_cap": cap, "max_ctx": 64})
    _, info = cache_trial.setup({"model_path": str(tiny_model), "config": config})
    assert info["extra"]["routing_counts"] == "learned in the trial"
    assert reads == [str(tiny_model.resolve())]


def test_a_trial_places_experts_by_the_users_routing_counts_and_leaves_them_as_they_were(tiny_model: Path, cap: int):
    sizes = model_sizes(tiny_model)
    counts = np.arange(sizes.n_layers * sizes.n_expert, dtype=np.float64).reshape(sizes.n_layers, sizes.n_expert)
    stored = save_counts(model_fingerprint(tiny_model), counts)
    before = stored.read_bytes()
    [result] = CacheBackend().run_trials([{"vram_cap": cap, "eviction": "static"}], tiny_model, WORKLOAD, 300)
    assert result.outcome is Outcome.OK, result.message
    assert result.extra["routing_counts"] == "the user's"
    assert counts_path(model_fingerprint(tiny_model)).read_bytes() == before


def test_a_config_the_runtime_cannot_hold_is_a_failed_trial_not_a_crash_of_the_caller(tiny_model: Path):
    [result] = CacheBackend().run_trials([{"vram_cap": 700 * 2**20}], tiny_model, WORKLOAD, deadline_s=300)
    assert result.outcome is Outcome.CRASH
    assert "below the cache runtime's fixed need" in result.message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_study_stores_a_winner_that_exports_and_serves_as_that_config(tiny_model: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, cap: int):
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    done = _cli("run", str(tiny_model), "--backends", "cache", "--vram-cap", size_text(cap), "--trials", "4",
                "--no-remeasure", "--storage", url, "--prompt-tokens", "8", "--gen-tokens", "4", "--repetitions", "2", "--ctx", "64")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "winner (cache" in done.stdout and "autotune serve" in done.stdout
    [best] = Database(url).best_configs(inspect_model(tiny_model).fingerprint)
    assert best.backend == "cache" and best.objective_mean > 0 and best.config["vram_cap"] == cap
    # served as exported, from a first start: figures stored beside the trial's
    served = best.result["served"]
    assert served["decode_tps"]["mean"] > 0 and served["prefill_tps"]["mean"] > 0 and served["peak_vram_bytes"] is None
    assert f"served: decode {served['decode_tps']['mean']:.1f}" in " ".join(done.stdout.split())
    # the winner names a placement file of its own, holding the counts its trials learned
    placement = Path(best.config["placement"])
    trial_counts = json.loads(next((tmp_path / "trial store").rglob("*.json")).read_text())["counts"]
    assert json.loads(placement.read_text())["counts"] == trial_counts
    assert placement.is_relative_to(tmp_path / "data") and not list((tmp_path / "data").rglob("*.npy"))
    placement.unlink()  # gone: export writes it again from the database

    exported = {}
    for fmt in (None, "serve", "json"):
        answer = CliRunner().invoke(app, ["export", str(tiny_model), "--vram-cap", size_text(cap), "--storage", url,
                                          *(["--format", fmt] if fmt else [])])
        assert answer.exit_code == 0, answer.output
        config, path = parse_command(answer.stdout)
        assert (config, path) == (best.config, tiny_model)
        exported[fmt] = answer.stdout.strip()
    assert exported[None] == exported["serve"]
    assert f"--placement {placement}" in exported["serve"]
    assert json.loads(placement.read_text())["counts"] == trial_counts

    served = []
    monkeypatch.setattr("autotune.serve.launch.serve_model", lambda model, config, *rest: served.append((model, config)))
    argv = shlex.split(exported["serve"])
    json_file = tmp_path / "best.json"
    json_file.write_text(exported["json"])
    for args in (argv[1:], ["serve", str(tiny_model), "--config", str(json_file)],
                 ["serve", str(tiny_model), "--vram-cap", size_text(cap), "--best", "--storage", url]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert served.pop() == (tiny_model, best.config)


def test_serve_flags_override_the_base_config_and_bad_ones_are_one_line_errors(tiny_model: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    served = []
    monkeypatch.setattr("autotune.serve.launch.serve_model", lambda model, config, *rest: served.append(config))
    result = CliRunner().invoke(app, ["serve", str(tiny_model), "--vram-cap", "12G", "--eviction", "lru",
                                      "--prefetch-depth", "2", "--no-learned-placement", "--ctx", "1024"])
    assert result.exit_code == 0, result.output
    assert served.pop() == normalize({"vram_cap": 12 * 2**30, "eviction": "lru", "prefetch_depth": 2,
                                      "learned_placement": False, "max_ctx": 1024})
    for args, message in ((["--eviction", "fifo", "--vram-cap", "12G"], "eviction must be one of"),
                          (["--slot-split", "2", "--vram-cap", "12G"], "slot_split must be within"),
                          ([], "--vram-cap"),
                          (["--best"], "--best needs --vram-cap"),
                          (["--config", str(tmp_path / "missing.json")], "cannot read --config")):
        result = CliRunner().invoke(app, ["serve", str(tiny_model), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not served


def test_the_parent_plans_the_slot_split_the_child_allocates_from_the_same_counts(
        tiny_model: Path, cap: int, monkeypatch: pytest.MonkeyPatch):
    """The parent's VRAM prediction and the trial child seed from one source (the trials'
    placement file, ``cache_placement``), so a slot split by routing is planned as allocated."""
    from autotune.backends.cache.winner_placement import with_trial_placement
    from autotune.cache_runtime import budget
    from autotune.cache_runtime.budget import plan_vram
    from autotune.cache_runtime.learned import seed_counts

    config = normalize({"vram_cap": cap, "max_ctx": 64, "eviction": "static", "slot_split": 1.0})
    [result] = CacheBackend().run_trials([config], tiny_model, WORKLOAD, 300)  # learns the trials' counts
    assert result.outcome is Outcome.OK, result.message
    model, sizes = inspect_model(tiny_model), model_sizes(tiny_model)
    cfg = cache_config(with_trial_placement(config, model.fingerprint))
    counts, source = seed_counts(model.fingerprint, (sizes.n_layers, sizes.n_expert), cfg.placement)
    assert source == "the placement file's counts"
    planned = plan_vram(sizes, cfg, counts, kv_element_bytes=4)  # the CPU path's float32 KV cache
    assert list(planned.slots) == result.extra["slots_per_layer"]
    assert list(plan_vram(sizes, cfg, None, kv_element_bytes=4).slots) != result.extra["slots_per_layer"]
    planned_with = []  # the counts the backend's own prediction plans with
    monkeypatch.setattr(budget, "plan_vram", lambda *args, **kwargs: planned_with.append(args[2]) or plan_vram(*args, **kwargs))
    predicted = CacheBackend().predict_vram(config, model, WORKLOAD)
    assert len(planned_with) == 1 and np.array_equal(planned_with[0], counts)
    assert predicted == plan_vram(sizes, cfg, counts).peak

"""The end-of-study race: finalists are measured again until the leader stands clear, and
the winner is the finalist with the highest mean, not the luckiest single trial."""

from __future__ import annotations

from pathlib import Path

from autotune.backends.base import Config, Measurement, Outcome, TrialResult, Workload
from autotune.hardware import probe_hardware
from autotune.model_info import inspect_model
from autotune.search.race import RACE_ROUNDS
from autotune.search.study import Budget, Tuner
from autotune.storage import Database
from tests.fake_backend import FakeBackend


class ScriptedBackend(FakeBackend):
    """Measures in this process: each n_cpu_moe has a first result and then a steady one."""

    name = "scripted"

    def __init__(self, script: dict[int, tuple[list[float], list[float]]]):
        self.script = script
        self.calls: dict[int, int] = {}

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        return []  # the tests queue the configs they race

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        key = config["n_cpu_moe"]
        self.calls[key] = self.calls.get(key, 0) + 1
        first, steady = self.script[key]
        samples = first if self.calls[key] == 1 else steady
        return TrialResult(Outcome.OK, decode_tps=Measurement.of(samples), peak_vram_bytes=2**30, load_seconds=0.1)


def _race(tiny_model: Path, tmp_path: Path, script: dict[int, tuple[list[float], list[float]]]) -> tuple[Tuner, ScriptedBackend]:
    backend = ScriptedBackend(script)
    model = inspect_model(tiny_model)
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), model, probe_hardware(), [backend],
                  8 * 2**30, Workload(repetitions=2), "race", seed=0)
    for n_cpu_moe in script:
        tuner.study.enqueue_trial({"n_cpu_moe": n_cpu_moe, "n_threads": 2})
    outcome = tuner.run(tiny_model, Budget(trials=len(script)))
    assert outcome.winner is not None
    return tuner, backend


def test_a_lucky_first_trial_does_not_win_the_race(tiny_model: Path, tmp_path: Path):
    # n_cpu_moe 1 measured 140 once by luck and 120 ever after; n_cpu_moe 2 is a steady 130.
    tuner, backend = _race(tiny_model, tmp_path, {1: ([140, 140], [120, 121]), 2: ([130, 131], [130, 131])})
    assert tuner.choose_winner().config["n_cpu_moe"] == 2
    assert backend.calls == {1: 1 + RACE_ROUNDS, 2: 1 + RACE_ROUNDS}  # close: every round was needed


def test_the_race_stops_once_the_leader_stands_clear(tiny_model: Path, tmp_path: Path):
    tuner, backend = _race(tiny_model, tmp_path, {1: ([200, 201], [200, 201]), 2: ([100, 101], [100, 101])})
    assert tuner.choose_winner().config["n_cpu_moe"] == 1
    assert backend.calls == {1: 2, 2: 2}  # one round told them apart


def test_trials_of_one_config_pool_their_samples(tiny_model: Path, tmp_path: Path):
    tuner, _ = _race(tiny_model, tmp_path, {1: ([100, 102], [100, 102]), 2: ([101, 101], [101, 101])})
    tuner.study.enqueue_trial({"n_cpu_moe": 1, "n_threads": 2})
    tuner.run(tiny_model, Budget(trials=3), remeasure=False)
    [group] = [g for g in tuner.config_groups() if g[0].params["n_cpu_moe"] == 1]
    measurement, _ = tuner.pooled(group)
    assert len(group) == 2 and len(measurement.samples) == 2 * 2 + 2 * RACE_ROUNDS


class ScriptedWithPrior(ScriptedBackend):
    """Expects fewer experts on the CPU to be at least as fast, all else equal (as llama_cpp does)."""

    def expected_at_least_as_fast(self, a: Config, b: Config, workload: Workload) -> bool:
        return a["n_threads"] == b["n_threads"] and a["n_cpu_moe"] < b["n_cpu_moe"]


def _race_with_prior(tiny_model: Path, tmp_path: Path, script: dict) -> Tuner:
    backend = ScriptedWithPrior(script)
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model), probe_hardware(),
                  [backend], 8 * 2**30, Workload(repetitions=2), "prior", seed=0)
    for n_cpu_moe in script:
        tuner.study.enqueue_trial({"n_cpu_moe": n_cpu_moe, "n_threads": 2})
    tuner.run(tiny_model, Budget(trials=len(script)))
    return tuner


def test_within_the_spread_the_config_expected_faster_wins(tiny_model: Path, tmp_path: Path):
    # n_cpu_moe 2 leads by 1 tok/s with a spread of 6: the prior picks n_cpu_moe 1.
    tuner = _race_with_prior(tiny_model, tmp_path, {1: ([64, 70], [60, 72]), 2: ([70, 72], [62, 72])})
    assert tuner.choose_winner().config["n_cpu_moe"] == 1


def test_a_clear_lead_beats_the_prior(tiny_model: Path, tmp_path: Path):
    tuner = _race_with_prior(tiny_model, tmp_path, {1: ([50, 51], [50, 51]), 2: ([70, 71], [70, 71])})
    assert tuner.choose_winner().config["n_cpu_moe"] == 2


def test_llama_cpp_expects_fewer_cpu_layers_to_be_faster_all_else_equal():
    from autotune.backends.llama_cpp.backend import LlamaCppBackend

    prior, decode = LlamaCppBackend().expected_at_least_as_fast, Workload()
    fewer, more = {"n_cpu_moe": 20, "n_ubatch": 512, "n_threads": 16}, {"n_cpu_moe": 21, "n_ubatch": 2048, "n_threads": 16}
    assert prior(fewer, more, decode) and not prior(more, fewer, decode)
    assert not prior(fewer, more, Workload(objective="prefill"))  # there the batch size matters
    assert not prior({**fewer, "n_threads": 8}, more, decode)


class LoadSharingBackend(ScriptedBackend):
    """Declares load keys (none: every config shares one load) and measures configs that share a
    load in one ``run_trials`` call, as the backends whose configs can share a model load do."""

    load_keys = ()

    def __init__(self, script: dict[int, tuple[list[float], list[float]]]):
        super().__init__(script)
        self.batches: list[list[int]] = []

    def run_trials(self, configs: list[Config], model_path: Path, workload: Workload, deadline_s: float
                   ) -> list[TrialResult]:
        self.batches.append([config["n_cpu_moe"] for config in configs])
        return [self.run_trial(config, model_path, workload, deadline_s) for config in configs]


def test_a_rounds_finalists_that_can_share_a_load_are_measured_in_one_call_in_rotating_order(
        tiny_model: Path, tmp_path: Path):
    backend = LoadSharingBackend({1: ([140, 140], [120, 121]), 2: ([130, 131], [130, 131]), 3: ([125, 126], [125, 126])})
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model), probe_hardware(),
                  [backend], 8 * 2**30, Workload(repetitions=2), "race", seed=0, batch=1)
    for n_cpu_moe in (1, 2, 3):
        tuner.study.enqueue_trial({"n_cpu_moe": n_cpu_moe, "n_threads": 2})
    tuner.run(tiny_model, Budget(trials=3))
    rounds = backend.batches
    assert rounds[0] == [1, 2, 3]  # the finalists, best first
    assert all(len(batch) == len(set(batch)) for batch in rounds)
    assert len(rounds) >= 2 and rounds[1][0] == rounds[0][1]  # the next round starts one further on
    assert sum(map(len, rounds)) == sum(backend.calls.values()) - 3  # every re-measurement went through a shared call

"""How baselines are queued and run: the "largest split that fits" follows the calibrated
memory model (once the first measured peak shows the formula overestimates, the split it had
ruled out is queued; once a split that fit by it is measured over the cap, the next one is); a
budget-filling runtime's baselines stay within the cap; queued baselines that share a model
load are measured in one."""

from __future__ import annotations

from pathlib import Path

from autotune.backends.base import Config, Measurement, Outcome, TrialResult, Workload
from autotune.hardware import probe_hardware
from autotune.model_info import inspect_model
from autotune.search.records import TrialRecord
from autotune.search.study import Budget, Tuner
from autotune.storage import Database
from tests.fake_backend import GIB, FakeBackend

OVERESTIMATE = int(0.3 * GIB)


class OverestimatingBackend(FakeBackend):
    """Its formula says 0.3 GiB more than a config really takes; measures in this process."""

    name = "overestimating"

    def real_vram(self, config: Config, model) -> int:
        return GIB + (model.n_layers - config["n_cpu_moe"]) * GIB // 2

    def predict_vram(self, config: Config, model, workload: Workload) -> int:
        return self.real_vram(config, model) + OVERESTIMATE

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        fits = [n for n in range(model.n_layers + 1) if self.predict_vram({"n_cpu_moe": n}, model, workload) <= vram_cap]
        return [{"n_cpu_moe": model.n_layers, "n_threads": 2}, {"n_cpu_moe": fits[0], "n_threads": 2}]

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        model = inspect_model(model_path)
        return TrialResult(Outcome.OK, decode_tps=Measurement.of([self.speed(config, model)] * 2),
                           peak_vram_bytes=self.real_vram(config, model))


def test_the_fit_split_waits_for_the_calibrated_memory_model(tiny_model: Path, tmp_path: Path):
    """The probe (all experts on the CPU) runs first; the split that fits is queued only once
    its peak calibrated the formula: the split the formula alone allowed (2) is never queued."""
    model = inspect_model(tiny_model)  # 4 layers: really 2.5 GiB with n_cpu_moe 1, 2.8 GiB by the formula
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), model, probe_hardware(), [OverestimatingBackend()],
                  int(2.6 * GIB), Workload(repetitions=2), "fit", seed=0, batch=1)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=3), remeasure=False)
    ran = [(t.params["n_cpu_moe"], TrialRecord.from_trial(t).seeded) for t in tuner.measured_trials()]
    assert ran[:2] == [(4, "baseline"), (1, "baseline, memory model calibrated")]
    assert (2, "baseline") not in ran
    assert tuner.choose_winner().config["n_cpu_moe"] == 1


class LessOverestimatingNearTheGpuBackend(OverestimatingBackend):
    """Its formula overestimates the all-CPU probe by 0.3 GiB, and each layer's experts on the
    GPU by 0.05 GiB less (as llama.cpp's formula does): a split that fits by the probe's
    calibration can be over the cap."""

    name = "drifting"

    def predict_vram(self, config: Config, model, workload: Workload) -> int:
        on_gpu = model.n_layers - config["n_cpu_moe"]
        return self.real_vram(config, model) + OVERESTIMATE - on_gpu * GIB // 20


def test_a_split_measured_over_the_cap_gives_way_to_the_next(tiny_model: Path, tmp_path: Path):
    """By the probe (-0.3 GiB), n_cpu_moe 1 fits 2.4 GiB; it measures 2.5 GiB, and the split the
    formula allows with that error (-0.15 GiB) is queued next: 2, which fits and wins."""
    model = inspect_model(tiny_model)
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), model, probe_hardware(),
                  [LessOverestimatingNearTheGpuBackend()], int(2.4 * GIB), Workload(repetitions=2), "drift",
                  seed=0, batch=1)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=3), remeasure=False)
    ran = [(t.params["n_cpu_moe"], (record := TrialRecord.from_trial(t)).seeded, record.outcome)
           for t in tuner.measured_trials()]
    calibrated = "baseline, memory model calibrated"
    assert ran == [(4, "baseline", Outcome.OK), (1, calibrated, Outcome.OVER_CAP), (2, calibrated, Outcome.OK)]
    assert tuner.choose_winner().config["n_cpu_moe"] == 2


def test_baselines_held_back_are_queued_even_when_the_probe_measures_no_peak(tiny_model: Path, tmp_path: Path,
                                                                              monkeypatch):
    """A probe that crashes calibrates nothing; the other baselines still follow it."""
    monkeypatch.setenv("FAKE_BACKEND_FAULTS", "4=crash")
    backend = OverestimatingBackend()
    backend.run_trial = FakeBackend.run_trial.__get__(backend)  # the fault-injecting child process
    model = inspect_model(tiny_model)
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), model, probe_hardware(), [backend],
                  int(2.6 * GIB), Workload(repetitions=2), "probe", seed=0, batch=1)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=2), remeasure=False)
    seeded = [(t.params["n_cpu_moe"], TrialRecord.from_trial(t).seeded) for t in tuner.study.get_trials(deepcopy=False)]
    assert seeded[0] == (4, "baseline") and (2, "baseline") in seeded[1:]


class BudgetFillingBackend(OverestimatingBackend):
    """A runtime that fills the VRAM budget its config names, as the cache backend does."""

    name = "budget_filling"
    fills_budget = True

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        return [{"n_cpu_moe": model.n_layers, "n_threads": 2, "vram_cap": vram_cap}]

    def fill_cap(self, config: Config, vram_cap: int) -> Config:
        return {**config, "vram_cap": vram_cap}


def test_a_budget_filling_runtime_that_overestimates_is_not_queued_again_above_the_cap(tiny_model: Path,
                                                                                       tmp_path: Path):
    """Its sampled configs never get more than the cap, so its calibrated baselines do not
    either: the same baseline again (same budget) is not queued a second time."""
    model = inspect_model(tiny_model)
    cap = int(2.6 * GIB)
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), model, probe_hardware(), [BudgetFillingBackend()],
                  cap, Workload(repetitions=2), "fill", seed=0, batch=1)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=1), remeasure=False)
    assert tuner.calibration.correction("budget_filling") < 0  # the formula overestimated
    queued = [t.system_attrs["fixed_params"] for t in tuner.study.get_trials(deepcopy=False)]
    assert [p["vram_cap"] for p in queued] == [cap]


class QueuedLoadSharingBackend(BudgetFillingBackend):
    """Measures configs with the same thread count in one call (its load-time knob)."""

    name = "sharing"
    load_keys = ("n_threads",)

    def __init__(self):
        self.loads: list[list[int]] = []

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        return [{"n_cpu_moe": n, "n_threads": t} for n, t in ((4, 2), (3, 2), (2, 4), (1, 2))]

    def run_trials(self, configs: list[Config], model_path: Path, workload: Workload, deadline_s: float) -> list[TrialResult]:
        self.loads.append([config["n_cpu_moe"] for config in configs])
        return [BudgetFillingBackend.run_trial(self, c, model_path, workload, deadline_s) for c in configs]

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        self.loads.append([config["n_cpu_moe"]])
        return super().run_trial(config, model_path, workload, deadline_s)


def test_queued_baselines_that_share_a_model_load_are_measured_in_one(tiny_model: Path, tmp_path: Path):
    """In queue order: the two baselines behind each other with 2 threads share one load, the
    one with 4 threads and the last one (2 threads again, but not next to the first two) do not."""
    backend = QueuedLoadSharingBackend()
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model), probe_hardware(),
                  [backend], 8 * GIB, Workload(repetitions=2), "share", seed=0, batch=2)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=4), remeasure=False)
    assert backend.loads == [[4, 3], [2], [1]]


class ManyBaselinesBackend(BudgetFillingBackend):
    """A budget-filling runtime with three baselines (as the cache backend has several)."""

    name = "many"

    def baselines(self, model, hw, vram_cap, workload) -> list[Config]:
        return [{"n_cpu_moe": n, "n_threads": 2, "vram_cap": vram_cap} for n in (4, 3, 2)]


def test_a_split_sized_again_goes_before_the_other_backends_baselines(tiny_model: Path, tmp_path: Path):
    """The drifting split that fit by the probe (1) measures over the cap; the split sized again
    (2) runs next, not behind the other backend's three baselines queued since the probe."""
    tuner = Tuner(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), inspect_model(tiny_model), probe_hardware(),
                  [LessOverestimatingNearTheGpuBackend(), ManyBaselinesBackend()], int(2.4 * GIB),
                  Workload(repetitions=2), "order", seed=0, batch=1)
    tuner.seed_baselines()
    tuner.run(tiny_model, Budget(trials=6), remeasure=False)
    ran = [(t.params["backend"], t.params["n_cpu_moe"]) for t in tuner.measured_trials()]
    assert ran == [("drifting", 4), ("drifting", 1), ("drifting", 2), ("many", 4), ("many", 3), ("many", 2)]

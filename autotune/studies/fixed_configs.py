"""The parts that measure fixed configs: the baselines (at one cap) and the exhaustive grid.

Every measurement runs in a fresh process through the backend's ``run_trial`` (one model load
each), so a grid row's time is what one trial of that config costs.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable

from autotune.backends.base import Backend, Config, Workload
from autotune.errors import AutotuneError
from autotune.hardware import HardwareProfile
from autotune.model_info import ModelProfile
from autotune.studies.definition import BaselineSpec, GridSpec
from autotune.studies.rows import fits, launch_command, objective_mean, pooled_row

GRID_MARGIN = 1.05  # the grid measures configs predicted up to 5% over the largest cap: measured peaks decide
OnRow = Callable[[dict[str, Any]], None]


def measure(backend: Backend, config: Config, model: ModelProfile, model_path: Path, workload: Workload,
            deadline_s: float, repeats: int = 1) -> dict[str, Any]:
    """One row: the config measured ``repeats`` times (stopping at a failure), samples pooled."""
    started = time.monotonic()
    results = []
    for _ in range(repeats):
        results.append(backend.run_trial(config, model_path, workload, deadline_s))
        if not results[-1].ok:
            break
    row = pooled_row(config, results, workload, backend.predict_vram(config, model, workload))
    row["seconds"] = time.monotonic() - started
    row["command"] = launch_command(backend, config, model_path)
    return row


def baseline_configs(backend: Backend, model: ModelProfile, hw: HardwareProfile, cap: int, workload: Workload,
                     spec: BaselineSpec) -> tuple[dict[str, list[Config]], dict[str, str]]:
    """The configs of each baseline, and why a baseline has none:

    - ``all_cpu``: every layer's experts on the CPU, the rest on the GPU;
    - ``best_n_cpu_moe``: ``--n-cpu-moe`` from one below the smallest value predicted to fit,
      ``n_cpu_moe_span`` values up (the memory model may be off by a layer; measured peaks decide);
    - ``all_gpu``: everything on the GPU, when predicted to fit.
    """
    if not model.is_moe:
        raise AutotuneError("the baselines place experts: the model has none")
    common = {"n_gpu_layers": model.n_layers + 1, "n_threads": hw.physical_cores, "n_threads_batch": hw.physical_cores}
    predicted = [backend.predict_vram({**common, "n_cpu_moe": n}, model, workload) for n in range(model.n_layers + 1)]
    configs: dict[str, list[Config]] = {}
    why: dict[str, str] = {}
    if "all_cpu" in spec.measure:
        configs["all_cpu"] = [{**common, "n_cpu_moe": model.n_layers}]
    if "best_n_cpu_moe" in spec.measure:
        first = next((n for n, p in enumerate(predicted) if p <= cap), None)
        if first is None:
            configs["best_n_cpu_moe"], why["best_n_cpu_moe"] = [], "no --n-cpu-moe value is predicted to fit"
        else:
            start = max(0, first - 1)
            configs["best_n_cpu_moe"] = [{**common, "n_cpu_moe": n}
                                         for n in range(start, min(model.n_layers, start + spec.n_cpu_moe_span - 1) + 1)]
    if "all_gpu" in spec.measure:
        if predicted[0] <= cap:
            configs["all_gpu"] = [{**common, "n_cpu_moe": 0}]
        else:
            configs["all_gpu"], why["all_gpu"] = [], f"predicted {predicted[0] / 2**30:.2f} GiB, over the cap"
    return configs, why


def run_baselines(backend: Backend, model: ModelProfile, model_path: Path, hw: HardwareProfile, cap: int,
                  workload: Workload, spec: BaselineSpec, deadline_s: float, on_row: OnRow) -> dict[str, Any]:
    """Every baseline config measured once (a config two baselines share, once), and each
    baseline's pick: the fastest of its configs that fits the cap."""
    configs, why = baseline_configs(backend, model, hw, cap, workload, spec)
    rows: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for config in (c for group in configs.values() for c in group):
        key = json.dumps(config, sort_keys=True)
        if key not in index:
            index[key] = len(rows)
            rows.append(measure(backend, config, model, model_path, workload, deadline_s, spec.repeats))
            on_row(rows[-1])
    picks: dict[str, Any] = {}
    for name, group in configs.items():
        candidates = [index[json.dumps(c, sort_keys=True)] for c in group]
        fitting = [i for i in candidates if fits(rows[i], cap)]
        best = max(fitting, key=lambda i: objective_mean(rows[i]), default=None)
        reason = why.get(name) or ("" if best is not None else "no config of it fits the cap (measured)")
        picks[name] = {"row": best, "candidates": candidates, "why": reason}
    return {"rows": rows, "baselines": picks}


def grid_configs(spec: GridSpec) -> list[Config]:
    """The product of the axes (in their order, the last axis fastest), each over the fixed knobs."""
    names = list(spec.axes)
    return [{**spec.fixed, **dict(zip(names, values))} for values in itertools.product(*(spec.axes[n] for n in names))]


def run_grid(backend: Backend, model: ModelProfile, model_path: Path, workload: Workload, spec: GridSpec,
             largest_cap: int, deadline_s: float, done: list[dict[str, Any]], time_left: Callable[[], float],
             on_rows: Callable[[list[dict[str, Any]]], None]) -> tuple[list[dict[str, Any]], bool]:
    """The grid's rows, continuing after ``done`` (rows of an interrupted run, in grid order);
    ``on_rows`` gets them all after each new row. Configs predicted over the largest cap
    (with a margin) are not measured. After its first new row, stops before a config when less
    time is left than a row has taken on average; returns (rows, complete)."""
    rows = list(done)
    measured = 0  # rows measured by this call
    for position, config in enumerate(grid_configs(spec)):
        if position < len(rows):
            if rows[position]["config"] != config:
                raise AutotuneError(f"the grid's saved rows do not match its definition at row {position}: "
                                    "delete the partial results of the grid to start it again")
            continue
        predicted = backend.predict_vram(config, model, workload)
        if predicted > largest_cap * GRID_MARGIN:
            rows.append({"config": config, "predicted_vram": predicted, "outcome": "skipped",
                         "message": "predicted over the largest cap", "seconds": 0.0})
            on_rows(rows)
            continue
        took = [r["seconds"] for r in rows if r["outcome"] != "skipped"]
        if measured and time_left() <= sum(took) / len(took):
            return rows, False
        rows.append(measure(backend, config, model, model_path, workload, deadline_s))
        measured += 1
        on_rows(rows)
    return rows, True

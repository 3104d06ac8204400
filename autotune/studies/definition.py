"""A study definition, ``studies/<name>/study.toml``, read into checked dataclasses.

::

    description = "what the study asks"
    caps = ["8G", "12G"]                 # VRAM caps (sizes as --vram-cap takes them; numbers are GiB),
                                         # their parts run in this order
    backends = ["llama_bench", "cache"]  # each one tuned at every cap

    [model]                              # a preset to synthesize, at each skew ...
    preset = "qwen3-30b-a3b"
    skews = [1.0, 0.0]
    routing = "temporal"                 # or "static" (autotune synth --routing; default: the preset's)
    quant = "q4_k_m"
    seed = 0
    # path = "model.gguf"                # ... or a GGUF file (relative to the study directory)

    [workload]                           # what every trial measures (as `autotune run` takes it)
    objective = "decode"
    prompt_tokens = 512
    gen_tokens = 128
    repetitions = 3
    ctx = 4096

    [tuner]                              # `autotune run` settings of every tuner part
    trials = 20                          # and/or minutes = 6
    sampler = "tpe"
    seed = 0
    batch = 2
    remeasure = true
    trial_timeout = "3m"

    [baselines]                          # measured at every cap by a llama.cpp backend
    backend = "llama_bench"
    measure = ["all_cpu", "best_n_cpu_moe", "all_gpu"]
    n_cpu_moe_span = 4                   # n_cpu_moe values tried from one below the smallest predicted to fit
    repeats = 2                          # each config measured this many times, each in a fresh process

    [grid]                               # the exhaustive grid, once per model (filtered by cap in the report)
    backend = "llama_bench"
    fixed = { n_gpu_layers = 99 }
    axes = { n_cpu_moe = [8, 12, 16], n_threads = [8, 16] }

Unknown keys are errors (a typo would otherwise silently change the study).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.backends.base import Workload
from autotune.errors import AutotuneError
from autotune.search.objective import OBJECTIVES
from autotune.synth.writer import ROUTING_MODES
from autotune.units import parse_duration, parse_size

DEFINITION_FILE = "study.toml"
BASELINES = ("all_cpu", "best_n_cpu_moe", "all_gpu")


@dataclass(frozen=True)
class ModelSpec:
    preset: str | None = None
    path: Path | None = None
    skews: tuple[float, ...] = (1.0,)
    routing: str | None = None  # None: the preset's default (synth.writer.default_routing)
    quant: str = "q4_k_m"
    seed: int = 0


@dataclass(frozen=True)
class TunerSpec:
    trials: int | None = 20
    minutes: float | None = None
    sampler: str = "tpe"
    seed: int | None = 0
    batch: int = 2
    remeasure: bool = True
    trial_timeout: str = "10m"


@dataclass(frozen=True)
class BaselineSpec:
    backend: str
    measure: tuple[str, ...] = BASELINES
    n_cpu_moe_span: int = 4
    repeats: int = 1


@dataclass(frozen=True)
class GridSpec:
    backend: str
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]


@dataclass(frozen=True)
class StudyDefinition:
    name: str
    directory: Path
    description: str
    model: ModelSpec
    caps: tuple[int, ...]  # smallest first
    cap_order: tuple[int, ...]  # as study.toml lists them: the order their parts run
    backends: tuple[str, ...]
    workload: Workload
    tuner: TunerSpec
    baselines: BaselineSpec | None
    grid: GridSpec | None

    @property
    def results_dir(self) -> Path:
        return self.directory / "results"


class _Table:
    """One TOML table, read key by key; whatever is left unread is reported as unknown."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise AutotuneError(f"{where} must be a table")
        self.data, self.where = dict(data), where

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise AutotuneError(f"{self.where}: {key} is missing")
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise AutotuneError(f"{self.where}: {key} must be a number, not {value!r}")
        if not isinstance(value, kind):
            raise AutotuneError(f"{self.where}: {key} has the wrong type ({value!r})")
        return value

    def done(self) -> None:
        if self.data:
            raise AutotuneError(f"{self.where}: unknown key(s) {', '.join(sorted(self.data))}")


def _cap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AutotuneError(f"caps: {value!r} is not a size")
    return int(value * 2**30) if isinstance(value, (int, float)) else parse_size(value)


def _positive(value: int | float | None, what: str) -> None:
    if value is not None and value <= 0:
        raise AutotuneError(f"{what} must be more than zero, not {value}")


def _model(table: _Table, directory: Path) -> ModelSpec:
    preset, path = table.take("preset", str), table.take("path", str)
    if (preset is None) == (path is None):
        raise AutotuneError(f"{table.where}: name either preset (to synthesize) or path (a GGUF file)")
    if path is not None and "skews" in table.data:
        raise AutotuneError(f"{table.where}: skews apply to a synthesized preset only")
    skews = table.take("skews", list, [1.0])
    if not skews or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in skews):
        raise AutotuneError(f"{table.where}: skews must be a list of numbers >= 0")
    if len(set(skews)) != len(skews):
        raise AutotuneError(f"{table.where}: skews repeat a value")
    if path is not None and "routing" in table.data:
        raise AutotuneError(f"{table.where}: routing applies to a synthesized preset only")
    routing = table.take("routing", str)
    if routing is not None and routing not in ROUTING_MODES:
        raise AutotuneError(f"{table.where}: routing must be one of {', '.join(ROUTING_MODES)}, not {routing!r}")
    spec = ModelSpec(
        preset=preset,
        path=(directory / path) if path is not None else None,
        skews=tuple(float(s) for s in skews) if preset is not None else (),
        routing=routing,
        quant=table.take("quant", str, "q4_k_m"),
        seed=table.take("seed", int, 0),
    )
    table.done()
    if preset is not None:
        from autotune.synth.presets import get_layout, get_preset

        get_preset(preset)
        get_layout(spec.quant)
    return spec


def _workload(table: _Table) -> Workload:
    workload = Workload(
        objective=table.take("objective", str, "decode"),
        n_prompt=table.take("prompt_tokens", int, 512),
        n_gen=table.take("gen_tokens", int, 128),
        repetitions=table.take("repetitions", int, 3),
        n_ctx=table.take("ctx", int, 4096),
    )
    table.done()
    if workload.objective not in OBJECTIVES:
        raise AutotuneError(f"{table.where}: unknown objective {workload.objective!r}; choose from: {', '.join(OBJECTIVES)}")
    if min(workload.n_prompt, workload.n_gen, workload.repetitions, workload.n_ctx) < 1:
        raise AutotuneError(f"{table.where}: prompt_tokens, gen_tokens, repetitions and ctx must be at least 1")
    if workload.n_prompt + workload.n_gen > workload.n_ctx:
        raise AutotuneError(f"{table.where}: ctx {workload.n_ctx} is smaller than prompt + generated tokens")
    return workload


def _tuner(table: _Table) -> TunerSpec:
    spec = TunerSpec(
        trials=table.take("trials", int),
        minutes=table.take("minutes", (int, float)),
        sampler=table.take("sampler", str, "tpe"),
        seed=table.take("seed", int, 0),
        batch=table.take("batch", int, 2),
        remeasure=table.take("remeasure", bool, True),
        trial_timeout=table.take("trial_timeout", str, "10m"),
    )
    table.done()
    if spec.trials is None and spec.minutes is None:
        raise AutotuneError(f"{table.where}: give trials, minutes or both")
    _positive(spec.trials, "[tuner] trials")
    _positive(spec.minutes, "[tuner] minutes")
    _positive(spec.batch, "[tuner] batch")
    parse_duration(spec.trial_timeout, f"{table.where}: trial_timeout")
    return spec


def _baselines(table: _Table, backends: tuple[str, ...]) -> BaselineSpec:
    measure = table.take("measure", list, list(BASELINES))
    unknown = [m for m in measure if m not in BASELINES]
    if unknown or not measure:
        raise AutotuneError(f"{table.where}: measure lists some of {', '.join(BASELINES)} (got {measure!r})")
    spec = BaselineSpec(
        backend=table.take("backend", str, backends[0]),
        measure=tuple(measure),
        n_cpu_moe_span=table.take("n_cpu_moe_span", int, 4),
        repeats=table.take("repeats", int, 1),
    )
    table.done()
    _positive(spec.n_cpu_moe_span, "[baselines] n_cpu_moe_span")
    _positive(spec.repeats, "[baselines] repeats")
    return spec


def _grid(table: _Table, backends: tuple[str, ...]) -> GridSpec | None:
    enabled = table.take("enabled", bool, True)
    spec = GridSpec(backend=table.take("backend", str, backends[0]), axes=table.take("axes", dict, required=True),
                    fixed=table.take("fixed", dict, {}))
    table.done()
    if not spec.axes or not all(isinstance(v, list) and v for v in spec.axes.values()):
        raise AutotuneError(f"{table.where}: axes maps each knob to a non-empty list of values")
    overlap = set(spec.axes) & set(spec.fixed)
    if overlap:
        raise AutotuneError(f"{table.where}: {', '.join(sorted(overlap))} is both fixed and an axis")
    return spec if enabled else None


def load_definition(directory: Path) -> StudyDefinition:
    """The study in ``directory`` (its ``study.toml``), checked; errors name the file and key."""
    directory = Path(directory)
    source = directory / DEFINITION_FILE
    if not source.is_file():
        raise AutotuneError(f"{directory}: no {DEFINITION_FILE} (a study directory holds its definition)")
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AutotuneError(f"{source}: {exc}") from None
    top = _Table(data, str(source))
    caps = tuple(_cap(c) for c in top.take("caps", list, required=True))
    if not caps or len(set(caps)) != len(caps):
        raise AutotuneError(f"{source}: caps must list distinct sizes")
    backends = tuple(top.take("backends", list, required=True))
    if not backends or not all(isinstance(b, str) and b for b in backends) or len(set(backends)) != len(backends):
        raise AutotuneError(f"{source}: backends must list distinct backend names")
    description = top.take("description", str, "")
    model = _model(_Table(top.take("model", dict, required=True), f"{source} [model]"), directory)
    workload = _workload(_Table(top.take("workload", dict, {}), f"{source} [workload]"))
    tuner = _tuner(_Table(top.take("tuner", dict, {"trials": 20}), f"{source} [tuner]"))
    baselines_table = top.take("baselines", dict)
    grid_table = top.take("grid", dict)
    top.done()
    return StudyDefinition(
        name=directory.resolve().name,
        directory=directory,
        description=description,
        model=model,
        caps=tuple(sorted(caps)),
        cap_order=caps,
        backends=backends,
        workload=workload,
        tuner=tuner,
        baselines=_baselines(_Table(baselines_table, f"{source} [baselines]"), backends) if baselines_table is not None else None,
        grid=_grid(_Table(grid_table, f"{source} [grid]"), backends) if grid_table is not None else None,
    )

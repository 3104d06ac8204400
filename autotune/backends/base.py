"""The small interface every backend implements, and the values that cross it.

A backend knows four things: which knobs it has (its search space and their defaults), how
much VRAM a config will take (before running it), how to run one measured trial, and how to
launch the winning config for real (``docs/writing-a-backend.md``). Trials always run in a
child process (see ``autotune.isolation.trial_process``); nothing here touches CUDA in the caller.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autotune.errors import AutotuneError
from autotune.isolation.gpu import TrialGpu

if TYPE_CHECKING:  # kept out of trial child processes, which import this module
    import optuna

    from autotune.hardware import HardwareProfile
    from autotune.model_info import ModelProfile

Config = dict[str, Any]
"""A backend's knob values, flat and JSON-serialisable (what Optuna samples)."""


class ConfigError(AutotuneError):
    """A config, or a launch command standing for one, that a backend cannot use."""


class Outcome(str, enum.Enum):
    """How a trial ended. Every one of them is a recorded result, not an exception."""

    OK = "ok"
    OOM = "oom"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OVER_CAP = "over_cap"
    PRUNED = "pruned"  # predicted over the cap: never run
    STOPPED = "stopped"  # the user stopped the study while this trial ran, or its worker died
    GPU_LOST = "gpu_lost"  # the GPU stopped answering (NVML errors) while this trial ran


@dataclass(frozen=True)
class Workload:
    """What a trial measures: r requests, each a prompt's prefill then N decoded tokens.

    The prompts are the user's (``autotune run --workload``) or the built-in set, as token ids
    of the model's own tokenizer; request i is prompt i mod len(prompts), and ``n_prompt`` is
    the mean length of the prompts measured (what llama-bench's ``-p`` is given). Without
    prompts a request is ``n_prompt`` seeded random tokens, as llama-bench measures (studies,
    ``--prompt-tokens``, and studies stored before prompts existed). ``name`` and ``digest``
    say which prompts (the file's name and content hash, or "built-in"); ``trace`` is a
    recorded routing trace named with them, carried to the cache trials for the runtime to
    replay (not replayed yet)."""

    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 3
    n_ctx: int = 4096
    objective: str = "decode"  # decode | prefill | request
    prompts: tuple[tuple[int, ...], ...] = ()
    name: str = ""
    digest: str = ""
    trace: str | None = None

    def key(self) -> str:
        """Stable text used to key best configs in the database (a random-token workload's is
        the one stored before prompts existed)."""
        key = f"{self.objective}:p{self.n_prompt}:n{self.n_gen}:c{self.n_ctx}"
        return f"{key}:w{self.digest}" if self.prompts else key

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Workload":
        """The workload ``dataclasses.asdict`` stored (in a study's settings)."""
        return cls(**{**data, "prompts": tuple(tuple(p) for p in data.get("prompts", ()))})

    def measured_prompts(self) -> list[list[int]]:
        """The prompt of each of the r requests (empty without prompts)."""
        if not self.prompts:
            return []
        return [list(self.prompts[i % len(self.prompts)]) for i in range(self.repetitions)]

    @property
    def tokens_needed(self) -> int:
        """The context the longest request fills: its prompt and the generated tokens."""
        return max(map(len, self.prompts), default=self.n_prompt) + self.n_gen

    def trial_inputs(self) -> dict[str, Any]:
        """What a trial child is given: lengths, each request's prompt, the routing trace."""
        return {"n_prompt": self.n_prompt, "n_gen": self.n_gen, "repetitions": self.repetitions,
                "prompts": self.measured_prompts(), "trace": self.trace}

    def record(self) -> dict[str, Any]:
        """Which workload, as a stored winner keeps it (``describe`` reads it)."""
        record: dict[str, Any] = {"prompt_tokens": self.n_prompt, "gen_tokens": self.n_gen}
        if self.prompts:
            record.update(prompts=self.name, sha256=self.digest, count=len(self.prompts), trace=self.trace)
        return record

    @staticmethod
    def describe(record: dict[str, Any] | None) -> str:
        """One line for a stored workload record: which prompts, how long."""
        if not record:
            return "not recorded"
        if "prompts" not in record:
            return f"random tokens: {record['prompt_tokens']}-token prompts, {record['gen_tokens']} generated"
        trace = f", trace {record['trace']}" if record.get("trace") else ""
        return (f"{record['prompts']} (sha256 {record['sha256']}, {record['count']} prompts, mean "
                f"{record['prompt_tokens']} tokens measured, {record['gen_tokens']} generated{trace})")


@dataclass
class Measurement:
    """Mean and spread (sample standard deviation) of repeated measurements."""

    mean: float
    std: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: list[float]) -> "Measurement":
        import statistics

        if not samples:
            return cls(0.0, 0.0, [])
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(statistics.fmean(samples), std, list(samples))

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass
class TrialResult:
    """One trial's outcome and figures. A failed trial carries its outcome and message."""

    outcome: Outcome
    message: str = ""
    decode_tps: Measurement | None = None
    prefill_tps: Measurement | None = None
    peak_vram_bytes: int | None = None
    load_seconds: float = 0.0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cache hit rate, PCIe bytes/token

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrialResult":
        data = dict(data)
        data["outcome"] = Outcome(data["outcome"])
        for key in ("decode_tps", "prefill_tps"):
            if data.get(key) is not None:
                data[key] = Measurement(**data[key])
        return cls(**data)


class Backend(abc.ABC):
    """One way of running a model. Implementations live one per module (or subpackage) of this
    package and subclass this one, as Optuna's samplers subclass ``BaseSampler``: the abstract
    members are what every backend must say; the others are capabilities, each with the default
    a backend without it gets. ``docs/writing-a-backend.md`` walks through one."""

    name: ClassVar[str]
    default_format: ClassVar[str] = "json"
    """The format of ``launch_command`` that ``autotune run`` prints and ``export`` writes."""
    served_format: ClassVar[str | None] = None
    """The launch-command format that starts an OpenAI-compatible HTTP server: what ``autotune
    run`` serves to check its finalists (``search.verify``); None where the backend has none."""
    gpu_only_knobs: ClassVar[tuple[str, ...]] = ()
    """Knobs that act only through a GPU: on a machine without one they change nothing, so the
    backend does not search them there and ``autotune run`` leaves them out of its trial lines."""
    load_keys: ClassVar[tuple[str, ...] | None] = None
    """Knobs fixed when the model loads. Where declared, the tuner measures configs equal in
    them in one child (``run_trials``) and samples siblings that share a load; None: every
    trial loads the model itself."""
    fills_budget: ClassVar[bool] = False
    """A runtime that fills whatever VRAM budget its config names: the tuner hands each sampled
    config the study's cap through ``fill_cap`` instead of searching the budget."""
    gpu: TrialGpu = TrialGpu()
    """The GPU this backend's trial children (and its served command) run on, given to each
    child in its environment (``TrialGpu.env``); ``get_backend`` sets it. Default: the GPUs
    this process sees."""

    @abc.abstractmethod
    def available(self) -> str | None:
        """None when usable here, else the one-line reason it is not (missing package, ...)."""

    @abc.abstractmethod
    def supports(self, model: ModelProfile) -> str | None:
        """None when this backend can run the model, else the reason it declines."""

    @abc.abstractmethod
    def suggest(
        self, trial: optuna.Trial, model: ModelProfile, hw: HardwareProfile, workload: Workload
    ) -> Config:
        """Sample one config from this backend's (conditional) search space for the workload."""

    @abc.abstractmethod
    def baselines(
        self, model: ModelProfile, hw: HardwareProfile, vram_cap: int, workload: Workload
    ) -> list[Config]:
        """Configs a careful user would try first; the study is seeded with them."""

    @abc.abstractmethod
    def defaults(
        self, model: ModelProfile, hw: HardwareProfile, workload: Workload, config: Config | None = None
    ) -> Config:
        """The knob values this backend runs with where none is set, for this model, machine and
        workload, in canonical form. Given a config, a knob whose default follows another knob
        takes it from that config (llama.cpp's n_threads_batch follows n_threads). ``autotune
        run`` names only the knobs of a trial that differ from these."""

    @abc.abstractmethod
    def predict_vram(self, config: Config, model: ModelProfile, workload: Workload) -> int:
        """Peak VRAM in bytes the config will take, CUDA context included, before running it."""

    @abc.abstractmethod
    def run_trial(
        self, config: Config, model_path: Path, workload: Workload, deadline_s: float
    ) -> TrialResult:
        """Measure one config in a child process; never raises for trial failures."""

    @abc.abstractmethod
    def launch_command(self, config: Config, model_path: Path, fmt: str) -> str:
        """A shell-quoted command (or Python snippet) that runs the model with this config."""

    @abc.abstractmethod
    def parse_command(self, command: str) -> tuple[Config, Path]:
        """Inverse of ``launch_command``: the config and model path a command stands for."""

    def run_trials(
        self, configs: list[Config], model_path: Path, workload: Workload, deadline_s: float
    ) -> list[TrialResult]:
        """One result per config, in order. Default: a ``run_trial`` each; a backend with
        ``load_keys`` measures configs that share a load in one child."""
        return [self.run_trial(config, model_path, workload, deadline_s) for config in configs]

    def fill_cap(self, config: Config, vram_cap: int) -> Config:
        """The config with the VRAM budget it may fill (``fills_budget``). Default: unchanged."""
        return config

    def expected_at_least_as_fast(self, a: Config, b: Config, workload: Workload) -> bool:
        """Whether config ``a`` is known, before measuring, to run at least as fast as ``b``
        (a prior the winner's choice uses among finalists within each other's spread).
        Default: nothing is known."""
        return False

    def keep_winner(self, config: Config, model: ModelProfile, study_name: str) -> tuple[Config, dict[str, Any]]:
        """The winner's config as stored and exported, and what the database keeps beside it:
        whatever a trial's speed depended on outside its knobs goes into the config, so the
        exported command reproduces it on a fresh start. Default: the config as it is."""
        return config, {}

    def restore_winner(self, config: Config, kept: dict[str, Any]) -> None:
        """Recreate what a stored winner's config names outside the database (a file gone
        since) from what ``keep_winner`` kept. Default: nothing to recreate."""

"""What ``autotune run`` and ``autotune worker`` print of each finished trial: one line.

``#N backend <knobs that differ from the backend's defaults> <speed ± spread> <peak/cap>``;
a pruned trial shows its predicted VRAM over the cap, a failed one its outcome and the last
line of its message. On a machine without an NVIDIA GPU the knobs that only act through one
(``Backend.gpu_only_knobs``, which the backends do not search there) and every VRAM figure
are left out, and ``cpu_only_note`` says so once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from autotune.backends.base import Backend, Config, Outcome, Workload
from autotune.hardware import HardwareProfile
from autotune.model_info import ModelProfile
from autotune.search.records import TrialRecord
from autotune.search.study import Tuner

MESSAGE_CHARS = 60  # of a failed trial's last message line


def cpu_only_note(hw: HardwareProfile) -> str | None:
    """The note ``autotune run`` starts with on a machine without an NVIDIA GPU, else None."""
    if hw.has_gpu:
        return None
    why = f" ({hw.gpu_error})" if hw.gpu_error else ""
    return f"no NVIDIA GPU here{why}: only CPU settings are tuned (no GPU placement, no VRAM figures)"


def _against_cap(n_bytes: float, cap: int) -> str:
    """``11.8/12.0 GiB``; with more decimals where one would show a figure other than the cap as equal to it."""
    a, b = n_bytes / 2**30, cap / 2**30
    digits = 1
    while digits < 3 and n_bytes != cap and f"{a:.{digits}f}" == f"{b:.{digits}f}":
        digits += 1
    return f"{a:.{digits}f}/{b:.{digits}f} GiB"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class TrialLines:
    """Writes the trial lines of one study (its backends, model, machine, cap and workload)."""

    backends: dict[str, Backend]
    model: ModelProfile
    hardware: HardwareProfile
    vram_cap: int
    workload: Workload
    unit: str

    @classmethod
    def of(cls, tuner: Tuner, unit: str) -> "TrialLines":
        return cls(tuner.backends, tuner.model, tuner.hardware, tuner.vram_cap, tuner.workload, unit)

    def knobs(self, backend_name: str, config: Config) -> str:
        """The config's knobs that differ from its backend's defaults, as ``key=value`` words;
        without a GPU, not those that act only through one."""
        backend = self.backends.get(backend_name)
        if backend is None:  # a trial of a backend this process does not run: every knob
            return " ".join(f"{key}={_value(value)}" for key, value in config.items())
        defaults = backend.defaults(self.model, self.hardware, self.workload, config)
        hidden = set() if self.hardware.has_gpu else set(backend.gpu_only_knobs)
        missing = object()
        return " ".join(f"{key}={_value(value)}" for key, value in config.items()
                        if key not in hidden and value != defaults.get(key, missing))

    def line(self, record: TrialRecord) -> str:
        """The trial as one line of rich markup."""
        knobs = escape(self.knobs(record.backend, record.config)) or "[dim](defaults)[/]"
        head = f"#{record.number:<3} {record.backend} {knobs}"
        if record.outcome is Outcome.PRUNED:
            if not self.hardware.has_gpu:  # never run: nothing in it to read on a CPU
                return f"[dim]{head}  pruned (GPU placement over the cap)[/]"
            return f"{head}  [yellow]pruned[/]: pred {_against_cap(record.predicted_vram, self.vram_cap)}"
        result = record.result
        if record.outcome is Outcome.OK:
            speed = f"[green]{record.objective:.1f} ± {record.objective_std:.1f} {self.unit}[/]"
            if not self.hardware.has_gpu:
                return f"{head}  {speed}"
            if result is not None and result.peak_vram_bytes:
                return f"{head}  {speed}  peak {_against_cap(result.peak_vram_bytes, self.vram_cap)}"
            return f"{head}  {speed}  pred {_against_cap(record.predicted_vram, self.vram_cap)}"
        lines = [line.strip() for line in (result.message if result else "").splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS - 1] + "…"
        return f"{head}  [red]{record.outcome.value}[/] {escape(message)}".rstrip()

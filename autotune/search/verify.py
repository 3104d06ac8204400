"""The end-to-end check of a study's winner: what its exported command serves.

Each finalist's launch command (the winner's first) is started as printed, on a free local
port, as a first start: with a user data directory of its own, empty (no routing counts saved,
as on a new machine; what it saves is dropped, so benchmark traffic never reaches the user's
counts). It is measured from an HTTP client for the study's prompt and generation lengths
(``autotune.served``). The finalist that serves the objective fastest within the cap is
stored as the winner, with its served figures beside its trial figures.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from autotune.backends.base import Measurement, Outcome, TrialResult, Workload
from autotune.cache_runtime.learned import DATA_DIR_ENV
from autotune.search.objective import UNITS, objective_of
from autotune.search.study import StudyOutcome, Tuner
from autotune.search.winner import trial_config_of
from autotune.served import ServedFigures, ServeFailed, measure_command
from autotune.storage import BestConfigRow
from autotune.units import format_size

SHORTFALL = 0.9  # served under this fraction of the trial figure is said in one line


@dataclass
class Served:
    """One finalist as served: its row (config as exported), command and figures."""

    row: BestConfigRow
    command: str
    figures: ServedFigures

    def objective(self, workload: Workload) -> float:
        result = TrialResult(Outcome.OK, decode_tps=self.figures.decode_tps, prefill_tps=self.figures.prefill_tps)
        return objective_of(result, workload).mean

    def within(self, vram_cap: int) -> bool:
        peak = self.figures.peak_vram_bytes
        return peak is None or peak <= vram_cap


def _finalists(tuner: Tuner, winner: BestConfigRow) -> list[BestConfigRow]:
    """The stored winner, then the race's other finalists."""
    key = _trial_key(winner)
    return [winner] + [row for row in tuner.ranked_finalists() if _trial_key(row) != key]


def _trial_key(row: BestConfigRow) -> tuple:
    return row.backend, sorted(trial_config_of(row).items())


def _served_prompts(workload: Workload) -> list[list[int]] | None:
    """The workload's own prompts as the served requests send them, the last one first again as
    the warm-up (None without prompts: random ones, as the trials measured)."""
    measured = workload.measured_prompts()
    return [measured[-1], *measured] if measured else None


def serve_finalists(tuner: Tuner, winner: BestConfigRow, model_path: Path, deadline_s: float,
                    console: Console) -> BestConfigRow:
    """Serve each finalist's exported command and store the one that serves fastest within the
    cap as the winner (the stored winner where none could be served); returns it."""
    workload, unit = tuner.workload, UNITS[tuner.workload.objective]
    served: list[Served] = []
    for row in _finalists(tuner, winner):
        backend = tuner.backends[row.backend]
        if backend.served_format is None:
            console.print(f"{row.backend} has no server command: its finalist is not served")
            continue
        command = backend.launch_command(tuner.kept(row).config, model_path, backend.served_format)
        console.print(f"serving {row.backend} as exported: {command}", highlight=False, soft_wrap=True)
        try:
            with tempfile.TemporaryDirectory(prefix="autotune-first-start-") as fresh:
                figures = measure_command(shlex.split(command), n_prompt=workload.n_prompt, n_gen=workload.n_gen,
                                          repetitions=workload.repetitions, n_vocab=tuner.model.n_vocab,
                                          deadline_s=deadline_s, gpu=backend.gpu, env={DATA_DIR_ENV: fresh},
                                          prompts=_served_prompts(workload))
        except ServeFailed as exc:
            console.print(f"[red]could not serve it[/]: {exc}", highlight=False)
            continue
        one = Served(row, command, figures)
        served.append(one)
        console.print(_line(one, workload, unit, tuner.vram_cap), highlight=False)
    fitting = [one for one in served if one.within(tuner.vram_cap)]
    if not fitting:
        why = "served within the cap" if served else "could be served"
        console.print(f"[yellow]no finalist {why}[/]: the winner stays as its trials measured it")
        return winner
    best = max(fitting, key=lambda one: one.objective(workload))
    best.row.result = best.row.result | {"served": best.figures.to_json(), "served_command": best.command}
    if best.row is not winner:
        console.print(f"[bold]trial #{best.row.result.get('trial')} ({best.row.backend}) serves fastest[/]: "
                      "it is the winner")
    return tuner.save_winner(best.row)


def serve_concluded(tuner: Tuner, outcome: StudyOutcome, model_path: Path, console: Console) -> None:
    """Where the study concluded with a winner, serve its finalists (``serve_finalists``): the
    outcome's winner becomes the one stored then."""
    if outcome.winner is not None and not outcome.interrupted:
        outcome.winner = serve_finalists(tuner, outcome.winner, model_path, tuner.trial_timeout_s, console)


def _line(one: Served, workload: Workload, unit: str, vram_cap: int) -> str:
    """Served figures beside the trial figure, and what falls short, in one or two lines."""
    figures, trial = one.figures, one.row.objective_mean
    objective = one.objective(workload)
    peak = figures.peak_vram_bytes
    text = (f"  served: decode {_tps(figures.decode_tps)}, prefill {_tps(figures.prefill_tps)} tok/s, "
            f"peak {format_size(peak) if peak else 'n/a'} (trial: {trial:.1f} {unit})")
    if objective < SHORTFALL * trial:
        text += (f"\n  [yellow]served {objective:.1f} {unit} is {objective / trial:.0%} of what its trials measured "
                 f"({trial:.1f})[/]")
    if not one.within(vram_cap):
        text += f"\n  [red]served peak {format_size(peak)} is over the cap {format_size(vram_cap)}[/]"
    return text


def _tps(measurement: Measurement) -> str:
    return f"{measurement.mean:.1f} ± {measurement.std:.1f}"

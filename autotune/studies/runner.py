"""``autotune study run``: every part of a study that ``results/`` does not hold yet, in order,
each written to ``results/<part>.json`` as soon as it is done (so a study runs over several
calls). A time budget stops between parts (each call runs at least one; a tuner part with a
minutes budget starts only when that much time is left, and until then later parts that can
start run: baselines, grid rows); the grid also stops between rows and continues from
``results/<part>.json.partial`` on the next call."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.backends.registry import get_backend
from autotune.errors import AutotuneError
from autotune.hardware import HardwareProfile, probe_hardware
from autotune.model_info import inspect_model
from autotune.search.objective import UNITS
from autotune.studies.definition import StudyDefinition, load_definition
from autotune.studies.fixed_configs import grid_configs, run_baselines, run_grid
from autotune.studies.models import default_models_dir, describe_model, ensure_model
from autotune.studies.plan import Part, cap_label, plan
from autotune.studies.tuner_part import run_tuner_part
from autotune.units import format_size, parse_duration

PARTIAL_SUFFIX = ".partial"
COMMIT_ENV = "AUTOTUNE_COMMIT"


@dataclass
class RunSummary:
    parts: int
    done_before: int
    ran: int
    left: int


def describe_machine(hw: HardwareProfile) -> dict[str, Any]:
    """The machine as ``autotune hw`` names it: description and hardware fingerprint."""
    gpus = [f"{g.name} ({format_size(g.total_bytes)})" for g in hw.gpus] or ["no GPU"]
    return {
        "fingerprint": hw.fingerprint,
        "description": f"{', '.join(gpus)} · {hw.cpu_model} · {hw.physical_cores} cores · RAM {format_size(hw.ram_bytes)}",
        "driver": hw.driver,
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _commit() -> str | None:
    """The code's git commit, where the code is a git checkout; ``+changes`` where the package's
    tracked files differ from it (the figures then come from code no commit holds). A copy of
    the code whose git history is not its own (a machine it was copied to) is named by
    ``$AUTOTUNE_COMMIT``, as whoever copied it knows it."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + "+changes" if _git("status", "--porcelain", "--untracked-files=no", ".") else commit


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def _existing(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def _check_same_machine(existing: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    other = next((r["machine"] for r in existing if r["machine"]["fingerprint"] != machine["fingerprint"]), None)
    if other is not None:
        raise AutotuneError(f"results/ holds parts measured on another kind of machine ({other['description']}, "
                            f"fingerprint {other['fingerprint']}); a study's figures come from one kind of machine: "
                            "move those results away to run the study here")


def _check_same_model(existing: list[dict[str, Any]], part: Part, fingerprint: str) -> None:
    other = next((r for r in existing if r["variant"] == part.variant.name and r["model"]["fingerprint"] != fingerprint), None)
    if other is not None:
        raise AutotuneError(f"part {other['part']} measured another model file (fingerprint {other['model']['fingerprint']}, "
                            f"here {fingerprint}); move those results away or use the same model")


class _RowProgress:
    """A progress bar over the configs a part measures, with one line per measured row."""

    def __init__(self, console: Console, total: int, unit: str):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("configs", total=total)
        self.unit = unit

    def __enter__(self) -> "_RowProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def row(self, row: dict[str, Any]) -> None:
        knobs = " ".join(f"{k}={v}" for k, v in row["config"].items())
        figure = (f"[green]{row['objective']['mean']:.1f} ± {row['objective']['std']:.1f} {self.unit}[/]"
                  if row.get("objective") else f"[yellow]{row['outcome']}[/] {row['message'][:100]}")
        peak = f", peak {format_size(row['peak_vram'])}" if row.get("peak_vram") else ""
        self.progress.console.print(f"{knobs}  {figure} (pred {format_size(row['predicted_vram'])}{peak})", highlight=False)
        self.progress.advance(self.task)


class StudyRunner:
    """One call of ``autotune study run``."""

    def __init__(self, directory: Path, seconds: float | None, models_dir: Path | None, console: Console):
        self.definition: StudyDefinition = load_definition(directory)
        self.seconds = seconds
        self.models_dir = models_dir or default_models_dir()
        self.console = console
        self.started = time.monotonic()
        self.results = self.definition.results_dir

    def time_left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.monotonic() - self.started)

    def _may_start(self, part: Part, first: bool) -> bool:
        """The call's first part always starts (so every call makes progress); a later one only
        while time is left, and a tuner part with a minutes budget only when that much is left."""
        minutes = self.definition.tuner.minutes
        needed = minutes * 60 if part.kind == "tuner" and minutes is not None else 0.0
        return first or (self.time_left() > 0 and self.time_left() >= needed)

    def run(self) -> RunSummary:
        parts = plan(self.definition)
        self.results.mkdir(parents=True, exist_ok=True)
        pending = [p for p in parts if not (self.results / f"{p.name}.json").exists()]
        summary = RunSummary(len(parts), len(parts) - len(pending), 0, len(pending))
        self.console.print(f"study {self.definition.name}: {len(parts)} parts, {summary.done_before} done earlier, "
                           f"{len(pending)} to run")
        if not pending:
            return summary
        for name in sorted({p.backend for p in pending}):
            reason = get_backend(name).available()
            if reason:
                raise AutotuneError(f"backend {name} cannot run here: {reason}")
        hardware = probe_hardware()
        machine = describe_machine(hardware)
        existing = _existing(self.results)
        _check_same_machine(existing, machine)
        stopped_in = ""
        try:
            for part in pending:
                if not self._may_start(part, first=part is pending[0]):
                    continue  # a later part may still fit in the time left
                self.console.rule(f"part {summary.done_before + summary.ran + 1}/{summary.parts}: {part.name}")
                record = self._run_part(part, hardware, machine, existing)
                if record is None:  # the grid stopped for time; its rows so far are kept
                    stopped_in = f" in {part.name}: its rows so far are kept;"
                    break
                _write_json(self.results / f"{part.name}.json", record)
                existing.append(record)
                summary.ran += 1
                summary.left -= 1
        except KeyboardInterrupt:
            self.console.print(f"[yellow]interrupted[/]: {summary.ran} part(s) written; run the same command again "
                               "to continue")
            raise SystemExit(130) from None
        if summary.left:
            self.console.print(f"[yellow]time is up[/]{stopped_in or ':'} {summary.ran} part(s) run, {summary.left} "
                               "left; run the same command again to continue")
        else:
            self.console.print(f"[bold green]all {summary.parts} parts done[/]: autotune report {self.definition.directory}")
        return summary

    def _run_part(self, part: Part, hardware: HardwareProfile, machine: dict[str, Any],
                  existing: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The part's record; None when the grid stopped for time (its rows so far are saved)."""
        definition = self.definition
        model_path = ensure_model(definition, part.variant, self.models_dir, self.console)
        model = inspect_model(model_path)
        _check_same_model(existing, part, model.fingerprint)
        record: dict[str, Any] = {
            "study": definition.name, "part": part.name, "kind": part.kind, "variant": part.variant.name,
            "skew": part.variant.skew, "cap": part.cap, "cap_label": cap_label(part.cap) if part.cap else None,
            "backend": part.backend, "machine": machine, "model": describe_model(definition, part.variant, model),
            "workload": asdict(definition.workload), "study_command": f"autotune study run studies/{definition.name}",
            "autotune_commit": _commit(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        started = time.monotonic()
        deadline_s = parse_duration(definition.tuner.trial_timeout)
        unit = UNITS[definition.workload.objective]
        if part.kind == "tuner":
            record |= run_tuner_part(definition, part, model_path, self.console)
        elif part.kind == "baselines":
            assert definition.baselines is not None and part.cap is not None
            with _RowProgress(self.console, None, unit) as progress:
                record |= run_baselines(get_backend(part.backend), model, model_path, hardware, part.cap,
                                        definition.workload, definition.baselines, deadline_s, progress.row)
        else:
            assert definition.grid is not None
            partial = self.results / f"{part.name}.json{PARTIAL_SUFFIX}"
            done = json.loads(partial.read_text())["rows"] if partial.exists() else []
            if done:
                self.console.print(f"continuing the grid after {len(done)} saved row(s)")

            with _RowProgress(self.console, len(grid_configs(definition.grid)) - len(done), unit) as progress:
                def on_rows(rows: list[dict[str, Any]]) -> None:
                    progress.row(rows[-1])
                    _write_json(partial, {"rows": rows})

                rows, complete = run_grid(get_backend(part.backend), model, model_path, definition.workload,
                                          definition.grid, max(definition.caps), deadline_s, done, self.time_left,
                                          on_rows)
            if not complete:
                return None
            record |= {"axes": definition.grid.axes, "fixed": definition.grid.fixed, "rows": rows,
                       "seconds": sum(row["seconds"] for row in rows)}
            partial.unlink(missing_ok=True)
            return record
        record["seconds"] = time.monotonic() - started
        return record

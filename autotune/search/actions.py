"""What the ``run``, ``best``, ``export`` and ``history`` commands do, minus the argument parsing."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.backends.base import Backend, Config, Outcome, Workload
from autotune.backends.registry import get_backend
from autotune.errors import AutotuneError
from autotune.hardware import HardwareProfile, probe_hardware
from autotune.isolation.gpu import TrialGpu
from autotune.model_info import ModelProfile, inspect_model
from autotune.search.objective import UNITS
from autotune.search.records import TrialRecord
from autotune.search.study import Budget, StudyOutcome, Tuner, register_study
from autotune.search.trial_lines import TrialLines, cpu_only_note
from autotune.search.workers import run_on_gpus
from autotune.served import ServedFigures
from autotune.storage import BestConfigRow, Database
from autotune.units import format_size, parse_size
from autotune.workloads.prompt_file import PromptSet
from autotune.workloads.tokens import prompt_workload


AUTO = "auto"


def default_backends(hw: HardwareProfile) -> list[str]:
    """What ``--backends auto`` tunes: llama.cpp, and the expert cache where there is an NVIDIA
    GPU for it (on a CPU its trials only measure the runtime's reference path)."""
    return ["llama_cpp", "cache"] if hw.has_gpu else ["llama_cpp"]


def _usable_backends(names: list[str], model: ModelProfile, llama_bench: str | None = None,
                     gpu: TrialGpu = TrialGpu()) -> list[Backend]:
    """The named backends that can run the model here, their trials on ``gpu``."""
    if not names:
        raise AutotuneError("--backends names no backend")
    usable, reasons = [], []
    for name in names:
        backend = get_backend(name, llama_bench, gpu)
        reason = backend.available() or backend.supports(model)
        if reason:
            reasons.append(f"{name}: {reason}")
        else:
            usable.append(backend)
    if not usable:
        raise AutotuneError("no backend can run this model here (" + "; ".join(reasons) + ")")
    return usable


def _check_cap(backends: list[Backend], model: ModelProfile, hw, vram_cap: int, workload: Workload) -> None:
    """The cap must admit at least the smallest baseline some backend would try."""
    smallest = min(
        backend.predict_vram(config, model, workload)
        for backend in backends
        for config in backend.baselines(model, hw, vram_cap, workload)
    )
    if smallest > vram_cap:
        raise AutotuneError(
            f"the VRAM cap {format_size(vram_cap)} is below the smallest config for this model "
            f"({format_size(smallest)} predicted); raise --vram-cap to at least that"
        )
    if hw.gpus and vram_cap > hw.gpus[0].total_bytes:
        raise AutotuneError(
            f"the VRAM cap {format_size(vram_cap)} is more than the GPU has ({format_size(hw.gpus[0].total_bytes)})"
        )


def _default_study_name(model: ModelProfile, vram_cap: int, workload: Workload) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.name).strip("-")[:48] or "model"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{vram_cap / 2**30:g}G-{workload.objective}-{stamp}"


def _resolve_study_name(db: Database, name: str | None, resume: bool, model: ModelProfile, hw, vram_cap: int, workload: Workload) -> str:
    if not resume:
        if name and db.study(name) is not None:
            raise AutotuneError(f"study {name!r} exists; add --resume to continue it or choose another name")
        return name or _default_study_name(model, vram_cap, workload)
    if name:
        row = db.study(name)
        if row is None:
            raise AutotuneError(f"no study named {name!r} to resume (see: autotune history)")
        if row.model_fingerprint != model.fingerprint:
            raise AutotuneError(f"study {name!r} is about another model")
        return name
    matching = [
        row for row in db.studies(model.fingerprint, hw.fingerprint)
        if row.vram_cap == vram_cap and row.workload_key == workload.key()
    ]
    if not matching:
        raise AutotuneError("no earlier study of this model, cap and workload on this machine to resume")
    return matching[-1].name


@dataclass
class PreparedStudy:
    """A study ready to run: its tuner, the usable backends, and what to tell the user first."""

    tuner: Tuner
    backends: list[Backend]
    unit: str
    done: int  # measured trials the study already holds
    notes: list[str]


@dataclass(frozen=True)
class StudyRequest:
    """What ``autotune run`` asks of a study (``prepare_study``), apart from how it runs and shows.

    ``llama_bench``: the executable of the llama_bench backend (None: the one it finds);
    ``prompts``: tokenized by the model into ``workload`` (whose objective and context stand)
    once some backend is known to run the model."""

    model_path: Path
    vram_cap: int
    backend_names: list[str]
    trials: int | None
    seconds: float | None
    workload: Workload
    study_name: str | None = None
    storage_url: str | None = None
    resume: bool = False
    trial_timeout_s: float = 600.0
    sampler: str = "tpe"
    seed: int | None = None
    batch: int = 2
    llama_bench: str | None = None
    prompts: PromptSet | None = None


def prepare_study(request: StudyRequest, gpu: TrialGpu = TrialGpu()) -> PreparedStudy:
    """Check the inputs, register (or reopen) the study, and queue its first trials. This
    process's own trials (and served finalists) run on ``gpu``."""
    model_path, vram_cap, workload, resume = request.model_path, request.vram_cap, request.workload, request.resume
    backend_names, batch = request.backend_names, request.batch
    model = inspect_model(model_path)
    hardware = probe_hardware()
    if backend_names == [AUTO]:
        backend_names = default_backends(hardware)
    backends = _usable_backends(backend_names, model, request.llama_bench, gpu)
    if request.prompts is not None:
        workload = prompt_workload(model_path, request.prompts, workload)
    _check_cap(backends, model, hardware, vram_cap, workload)
    db = Database(request.storage_url)
    name = _resolve_study_name(db, request.study_name, resume, model, hardware, vram_cap, workload)
    settings = {"backends": [b.name for b in backends], "trials": request.trials, "seconds": request.seconds,
                "sampler": request.sampler, "model_name": model.name, "workload": asdict(workload),
                "backend_specs": backend_names, "trial_timeout_s": request.trial_timeout_s,
                "batch": batch}  # what workers joining it need
    register_study(db, model, hardware, name, vram_cap, workload, settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuner = Tuner(db, model, hardware, backends, vram_cap, workload, name, request.sampler, request.seed,
                  request.trial_timeout_s, batch=batch)
    tuner.clear_stop_request()
    recovered = tuner.recover_interrupted()
    done = len(tuner.measured_trials())
    notes = [note for note in (cpu_only_note(hardware),) if note]
    notes.append(f"workload: {Workload.describe(workload.record())}")
    if workload.trace:
        notes.append("its routing trace is kept with the workload; trials do not replay traces yet")
    if resume:
        notes.append(f"resuming study {name}: {done} measured trials kept, {recovered} interrupted trial(s) queued again")
        tuner.seed_baselines()  # those still held back when it stopped (queued or tried ones are skipped)
    else:
        copied = tuner.warm_start()
        tuner.seed_baselines()
        if copied:
            notes.append(f"warm start: {copied} measured trial(s) of earlier studies on this model and machine")
    return PreparedStudy(tuner, backends, UNITS[workload.objective], done, notes)


def run_study(request: StudyRequest, console: Console, remeasure: bool = True, gpus: list[str] | None = None,
              verify: bool = True) -> StudyOutcome:
    """A study from start to winner. With ``gpus``: one worker process per GPU, and this
    process's race and served finalists on the first of them."""
    prepared = prepare_study(request, TrialGpu(gpus[0]) if gpus else TrialGpu())
    model_path, trials, seconds = request.model_path, request.trials, request.seconds
    tuner, unit = prepared.tuner, prepared.unit
    lines = TrialLines.of(tuner, unit)
    best_so_far = [0.0]
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        task = progress.add_task("trials", total=trials)

        def on_trial(record: TrialRecord) -> None:
            progress.console.print(lines.line(record), highlight=False, soft_wrap=True)
            if record.outcome is not Outcome.PRUNED:
                if record.outcome is Outcome.OK:
                    best_so_far[0] = max(best_so_far[0], record.objective)
                progress.update(task, advance=1, description=f"best {best_so_far[0]:.1f} {unit}")

        tuner.on_trial = on_trial
        progress.update(task, completed=min(prepared.done, trials or prepared.done))
        for note in prepared.notes:
            console.print(note)
        if gpus:
            outcome = run_on_gpus(tuner, gpus, model_path, seconds, remeasure, on_trial, progress.console,
                                  request.llama_bench)
        else:
            outcome = tuner.run(model_path, Budget(trials, seconds), remeasure=remeasure)

    if verify:
        from autotune.search.verify import serve_concluded

        serve_concluded(tuner, outcome, model_path, console)
    report(console, outcome, model_path, prepared.backends, unit, tuner.study_name)
    return outcome


def report(console: Console, outcome: StudyOutcome, model_path: Path, backends: list[Backend], unit: str, name: str) -> None:
    total = outcome.trial_seconds
    if total:
        console.print(f"time in trials {total:.0f} s, of which loading models {100 * outcome.load_seconds / total:.0f}%")
    if outcome.interrupted:
        how = "stopped on request" if outcome.stop_requested else "interrupted"
        console.print(f"[yellow]{how}[/]: every finished trial is stored. Continue with: autotune run {model_path} ... --resume --study {name}")
        raise SystemExit(130)
    winner = outcome.winner
    if winner is None:
        raise AutotuneError("no trial succeeded: see the failures above")
    backend = next(b for b in backends if b.name == winner.backend)
    console.print(
        f"[bold green]winner[/] ({winner.backend}, study {winner.study_name}): "
        f"{winner.objective_mean:.1f} ± {winner.objective_std:.1f} {unit} in its trials" + served_text(winner)
    )
    console.print(launch_command(backend, winner.config, model_path), highlight=False, soft_wrap=True)


def served_text(row: BestConfigRow) -> str:
    """``, served: decode X, prefill Y tok/s`` where the winner was served, else nothing."""
    served = row.result.get("served")
    return f", served: {ServedFigures.summary(served)}" if served else ""


def launch_command(backend: Backend, config: Config, model_path: Path) -> str:
    """The command shown for a config: the backend's own format (llama-server, autotune serve), else JSON."""
    return backend.launch_command(config, model_path, backend.default_format)


def _best_rows(model_path: Path, vram_cap: str | None, storage_url: str | None) -> list[BestConfigRow]:
    model = inspect_model(model_path)
    db = Database(storage_url)
    cap = parse_size(vram_cap) if vram_cap else None
    return db.best_configs(model.fingerprint, probe_hardware().fingerprint, cap)


def stored_best(model_path: Path, vram_cap: str | None, storage_url: str | None) -> list[BestConfigRow]:
    rows = _best_rows(model_path, vram_cap, storage_url)
    if not rows:
        raise AutotuneError(f"no stored result for {model_path} on this machine" + (f" at cap {vram_cap}" if vram_cap else "") + ": run `autotune run` first")
    return rows


def stored_winner(model_path: Path, vram_cap: str, objective: str, storage_url: str | None,
                  backend: str | None = None, prompts_digest: str | None = None) -> BestConfigRow:
    """The latest stored winner for the model on this machine at the cap (of ``backend`` only,
    and tuned on the prompts of ``prompts_digest`` only, if named)."""
    rows = [r for r in stored_best(model_path, vram_cap, storage_url)
            if r.workload_key.startswith(objective + ":") and backend in (None, r.backend)
            and (prompts_digest is None or r.workload_key.endswith(f":w{prompts_digest}"))]
    if not rows:
        of = f" {backend}" if backend else ""
        tuned = f" tuned on those prompts (sha256 {prompts_digest})" if prompts_digest else ""
        raise AutotuneError(f"no stored {objective}{of} winner{tuned} for {model_path} at cap {vram_cap}")
    return max(rows, key=lambda r: r.updated)


def export_command(model_path: Path, vram_cap: str, fmt: str | None, objective: str,
                   storage_url: str | None, prompts_digest: str | None = None) -> tuple[str, BestConfigRow]:
    """The stored winner's launch command, in ``fmt`` or (None) its backend's own format, and
    the winner (whatever the command names outside the database is written again if gone)."""
    row = stored_winner(model_path, vram_cap, objective, storage_url, prompts_digest=prompts_digest)
    backend = get_backend(row.backend)
    backend.restore_winner(row.config, row.result.get("kept", {}))
    return backend.launch_command(row.config, model_path, fmt or backend.default_format), row


def study_history(storage_url: str | None) -> list[tuple[str, ...]]:
    db = Database(storage_url)
    storage = db.optuna_storage()
    rows = []
    for row in db.studies():
        try:
            study = optuna.load_study(study_name=row.name, storage=storage)
            measured = [t for t in study.get_trials(deepcopy=False)
                        if t.state.name == "COMPLETE" and TrialRecord.from_trial(t).measured_here]
            best = max((t.value for t in measured if t.value), default=None)
        except KeyError:
            measured, best = [], None
        model_name = str(row.settings.get("model_name", row.model_fingerprint))
        rows.append((row.name, model_name, format_size(row.vram_cap), row.workload_key, str(len(measured)),
                     f"{best:.1f}" if best else "-", row.status, row.created.strftime("%Y-%m-%d %H:%M")))
    return rows

"""The ``autotune`` command line (Typer). Each command is a thin shell over a module."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from autotune import interrupts
from autotune.cache_runtime.cache_config import CACHE_KNOBS
from autotune.errors import AutotuneError
from autotune.knob_options import knob_options

if TYPE_CHECKING:
    from autotune.model_info import ModelProfile

app = typer.Typer(
    help="Find, by measurement, the fastest way to run a MoE GGUF model under a VRAM cap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
LLAMA_BENCH_ENV = "AUTOTUNE_LLAMA_BENCH"  # read by the option, here at the edge; no module sets it
LLAMA_BENCH_HELP = "llama-bench executable for the llama_bench backend (default: on PATH or next to this Python)"


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an AutotuneError into one line on stderr and a non-zero exit, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AutotuneError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@app.command()
@user_errors
def inspect(
    model: Path = typer.Argument(..., help="GGUF model file"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    tensors: bool = typer.Option(False, "--tensors", help="with --json: include the tensor table"),
) -> None:
    """Architecture, experts, quant types and bytes by group of a GGUF model."""
    from autotune.cache_runtime.support import runtime_gap
    from autotune.model_info import KV_TYPE_BYTES, inspect_model

    profile = inspect_model(model)
    gap = runtime_gap(profile)
    if as_json:
        print(json.dumps({**profile.to_json(with_tensors=tensors), "runtime_gap": gap}, indent=2))
        return
    console.print(f"[bold]{profile.name}[/]  ({profile.architecture}, fingerprint {profile.fingerprint})")
    console.print(
        f"layers {profile.n_layers} · embd {profile.n_embd} · heads {profile.n_head}/{profile.n_head_kv}"
        f" · head dim {profile.head_dim_k} · vocab {profile.n_vocab} · file {_gib(profile.file_bytes)}"
    )
    if profile.is_moe:
        console.print(
            f"experts {profile.n_expert}, {profile.n_expert_used} used per token, expert FFN {profile.n_ff_expert}"
            f" · one expert {_gib(profile.expert_bytes)} · all experts {_gib(profile.experts_bytes)}"
        )
        for line in _family_parts(profile):
            console.print(line)
    else:
        console.print("no experts: a dense model (the tuner can only tune layer offload for it)")
    groups = Table(title="bytes by group", show_edge=False)
    groups.add_column("group")
    groups.add_column("total", justify="right")
    groups.add_column("per layer (first)", justify="right")
    first = profile.layers[0] if profile.layers else None
    groups.add_row("token embedding", _gib(profile.token_embd_bytes), "")
    groups.add_row("output head + norm", _gib(profile.output_bytes), "")
    for name in ("attention", "router", "experts", "shared_experts", "dense_ffn", "other"):
        total = sum(getattr(layer, name) for layer in profile.layers)
        if total:
            groups.add_row(name.replace("_", " "), _gib(total), _gib(getattr(first, name)))
    console.print(groups)
    console.print(
        "quant types: " + ", ".join(f"{t} {_gib(b)}" for t, b in profile.quant_types.items())
    )
    console.print(
        "KV cache per token: "
        + ", ".join(f"{kv} {profile.kv_bytes_per_token(kv, kv)} B" for kv in KV_TYPE_BYTES)
    )
    console.print("cache runtime: " + (f"cannot run it: {gap}" if gap else f"runs {profile.architecture} "
                                       f"with {', '.join(profile.quant_types)}"), markup=False)


def _family_parts(profile: ModelProfile) -> list[str]:
    """One line for each part of the model's family beyond routed experts that it has."""
    lines = []
    if profile.n_shared_experts:
        lines.append(f"shared experts: {profile.n_shared_experts} per MoE layer, "
                     f"{_gib(profile.shared_experts_bytes)} in all")
    if profile.n_dense_lead:
        lines.append(f"leading dense layers: {profile.n_dense_lead} (FFN {profile.n_ff}), "
                     f"then {profile.n_moe_layers} MoE layers")
    if profile.kv_lora_rank:
        form = "one latent row per layer" if profile.latent_kv else "decompressed per head (an older file)"
        lines.append(f"latent attention (MLA): kv_lora_rank {profile.kv_lora_rank} + RoPE {profile.rope_dims} dims,"
                     f" cached as {form}: {profile.kv_bytes_per_token() // max(1, profile.n_layers)} B per token"
                     " and layer at f16")
    elif profile.rope_dims and profile.rope_dims != profile.head_dim_k:
        lines.append(f"partial RoPE: {profile.rope_dims} of {profile.head_dim_k} head dims")
    if profile.sliding_window:
        lines.append(f"sliding-window attention: {profile.sliding_window} tokens")
    if profile.attn_sinks:
        lines.append("attention sinks: per-head sink logits")
    return lines


@app.command()
@user_errors
def hw(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """GPUs, CPU and RAM of this machine, and its hardware fingerprint."""
    from autotune.hardware import probe_hardware

    profile = probe_hardware()
    if as_json:
        print(json.dumps(profile.to_json(), indent=2))
        return
    console.print(
        f"CPU: {profile.cpu_model} · {profile.physical_cores} physical cores"
        f" ({profile.logical_cores} logical) · RAM {_gib(profile.ram_bytes)}"
    )
    if not profile.gpus:
        console.print(f"GPU: no GPU ({profile.gpu_error})")
    for gpu in profile.gpus:
        pcie = f"PCIe gen {gpu.pcie_generation} x{gpu.pcie_width}" if gpu.pcie_generation else "PCIe unknown"
        console.print(
            f"GPU {gpu.index}: {gpu.name} · {_gib(gpu.total_bytes)} total, {_gib(gpu.free_bytes)} free"
            f" · {pcie} · compute {gpu.compute_capability} · driver {profile.driver}"
        )
    console.print(f"hardware fingerprint: {profile.fingerprint}")


@app.command()
@user_errors
def synth(
    out: Path = typer.Argument(..., help="where to write the GGUF"),
    preset: str = typer.Option("tiny", help="tiny | ragged-tiny | small | mixtral-tiny | qwen2moe-tiny | glm4moe-tiny | deepseek2-tiny"
                                            " | deepseek3-tiny | gpt-oss-tiny, or a real shape: qwen3-30b-a3b | qwen3-235b-a22b"
                                            " | mixtral-8x7b | glm-4.5-air | deepseek-v2-lite | deepseek-v3"
                                            " | qwen2-57b-a14b | qwen1.5-moe-a2.7b | gpt-oss-20b | gpt-oss-120b"),
    layers: Optional[int] = typer.Option(None, help="cut the preset to its first N layers (to fit a disk; "
                                         "the last keeps routed experts)"),
    quant: str = typer.Option("q4_k_m", help="q4_k_m | q4_k | q5_k | q6_k | q8_0 | f16 | q4_0 | q4_1 | "
                              "q5_0 | q5_1 | q2_k | q3_k | iq4_nl | iq4_xs | mxfp4 | iq2_xxs | iq3_xxs | iq3_s | "
                              "iq2_xs | iq2_s | iq1_s | iq1_m, or a mix "
                              "by tensor role: ud-q2_k_xl | iq4_xs-mix | mxfp4_moe"),
    skew: float = typer.Option(1.0, help="static routing skew: 1 = calibrated like real MoE models, 0 = none"),
    routing: Optional[str] = typer.Option(
        None, help="temporal = concentration and temporal locality calibrated to a real model (the default "
        "from 32 experts on) | static = fixed per-expert bias plus independent noise (with --skew 0: uniform; "
        "the default below 32 experts)", show_default=False,
    ),
    seed: int = typer.Option(0, help="random seed"),
    measure: bool = typer.Option(
        True, help="measure the routing the file really gives (runs it with llama.cpp)"
    ),
    measure_tokens: int = typer.Option(256, help="tokens to decode for the routing measurement"),
) -> None:
    """Write a random-weight MoE GGUF: qwen3moe, Mixtral-style llama, qwen2moe, glm4moe, deepseek2 or gpt-oss (for tests, demos and studies)."""
    from autotune.synth import write_synthetic_model

    with console.status(f"writing {preset} model to {out} ..."):
        report = write_synthetic_model(out, preset=preset, quant=quant, skew=skew, seed=seed, routing=routing,
                                       layers=layers)
    cut = f" cut to {layers} layers" if layers else ""
    console.print(
        f"wrote {report.path} ({_gib(report.file_bytes)}, preset {preset}{cut}, {quant}, {report.routing} routing, skew {skew})"
        f" in {report.seconds:.1f} s"
    )
    if not measure:
        return
    from autotune.measured_routing import measure_routing

    with console.status("measuring routing with llama.cpp ..."):
        routing = measure_routing(out, n_tokens=measure_tokens, seed=seed)
    console.print(routing.summary())



def _workload(objective: str, prompt_tokens: int | None, gen_tokens: int, repetitions: int, ctx: int,
              prompt_file: Path | None, trace: Path | None):
    """What trials measure, and the prompts to tokenize into it (``prepare_study``): those of
    ``--workload``, else the built-in set; none with ``--prompt-tokens`` (random prompts)."""
    from autotune.backends.base import Workload
    from autotune.search.objective import OBJECTIVES

    if objective not in OBJECTIVES:
        raise AutotuneError(f"unknown objective {objective!r}; choose from: {', '.join(OBJECTIVES)}")
    if min(prompt_tokens or 1, gen_tokens, repetitions, ctx) < 1:
        raise AutotuneError("--prompt-tokens, --gen-tokens, --repetitions and --ctx must be at least 1")
    if trace is not None and prompt_file is None:
        raise AutotuneError("--workload-trace is the routing trace of --workload's prompts: give --workload too")
    workload = Workload(n_prompt=prompt_tokens or 0, n_gen=gen_tokens, repetitions=repetitions, n_ctx=ctx,
                        objective=objective)
    if prompt_tokens is None:
        from autotune.workloads.prompt_file import builtin_prompts, read_prompt_file

        return workload, read_prompt_file(prompt_file, trace) if prompt_file is not None else builtin_prompts()
    if prompt_file is not None:
        raise AutotuneError("--prompt-tokens measures random prompts, --workload the file's: choose one")
    if prompt_tokens + gen_tokens > ctx:
        raise AutotuneError(f"--ctx {ctx} is smaller than prompt + generated tokens ({prompt_tokens + gen_tokens})")
    return workload, None


@app.command()
@user_errors
def run(
    model: Path = typer.Argument(..., help="GGUF model file"),
    vram_cap: str = typer.Option(..., "--vram-cap", help="VRAM the model may use, e.g. 16G, 16GiB, 12000M"),
    backends: str = typer.Option("auto", help="comma-separated: llama_cpp, llama_bench, cache; auto: llama_cpp, "
                                                "and cache where there is an NVIDIA GPU"),
    trials: int = typer.Option(30, min=0, help="measured trials to run (pruned ones are free; 0: no limit, with --time)"),
    time_budget: Optional[str] = typer.Option(None, "--time", help="wall-time budget, e.g. 15m"),
    objective: str = typer.Option("decode", help="decode | prefill | request (prompt + generation)"),
    ctx: int = typer.Option(4096, help="context size the config must serve"),
    workload_file: Optional[Path] = typer.Option(
        None, "--workload", help="JSONL of prompts to tune on, one a line: {\"prompt\": ...} or {\"messages\": [...]} "
        "(default: a built-in set of chat, code and prose)"),
    workload_trace: Optional[Path] = typer.Option(
        None, "--workload-trace", help="a recorded routing trace of --workload's prompts (kept with the workload)"),
    prompt_tokens: Optional[int] = typer.Option(None, help="measure random prompts of this many tokens instead of "
                                                          "prompts (as llama-bench does)"),
    gen_tokens: int = typer.Option(128, help="generated tokens per request"),
    repetitions: int = typer.Option(3, help="requests measured per trial (request i: prompt i, cycling)"),
    study: Optional[str] = typer.Option(None, help="study name (default: derived from model, cap, objective)"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL (default: SQLite in the user data dir)"),
    resume: bool = typer.Option(False, help="continue the named (or latest matching) study"),
    trial_timeout: str = typer.Option("10m", help="deadline of one trial"),
    sampler: str = typer.Option("tpe", help="tpe | tpe-independent | gp | random"),
    seed: Optional[int] = typer.Option(None, help="sampler seed"),
    remeasure: bool = typer.Option(True, help="measure the best few again before choosing the winner"),
    verify: bool = typer.Option(True, help="serve the finalists' exported commands, measure them over HTTP and "
                                           "pick the winner by served speed"),
    batch: int = typer.Option(2, min=1, help="trials per model load (siblings differ only in knobs set after loading)"),
    llama_bench: Optional[Path] = typer.Option(None, "--llama-bench", envvar=LLAMA_BENCH_ENV, help=LLAMA_BENCH_HELP),
    gpus: Optional[str] = typer.Option(None, help="one worker process per listed GPU on the same study, e.g. 0,1"),
    tui: bool = typer.Option(False, "--tui", help="run the study behind the live dashboard (x or Ctrl-C: stop after the running trial)"),
) -> None:
    """Tune MODEL under a VRAM cap; the winner is stored and printed as a launch command."""
    interrupts.install()

    from autotune.units import parse_duration, parse_size

    if not trials and not time_budget:
        raise AutotuneError("--trials 0 (no limit) needs a --time budget")
    if tui and gpus is not None:
        raise AutotuneError("--tui runs the study in this process; with --gpus, watch it with autotune dashboard instead")
    from autotune.search.samplers import check_sampler

    check_sampler(sampler)  # before the study is registered in the database
    workload, prompts = _workload(objective, prompt_tokens, gen_tokens, repetitions, ctx, workload_file, workload_trace)
    from autotune.search.actions import StudyRequest

    if tui:
        from autotune.tui.run import run_with_dashboard as run_study
    else:
        from autotune.search.actions import run_study
    request = StudyRequest(
        model_path=model,
        vram_cap=parse_size(vram_cap, "--vram-cap"),
        backend_names=[b.strip() for b in backends.split(",") if b.strip()],
        trials=trials or None,
        seconds=parse_duration(time_budget, "--time") if time_budget else None,
        workload=workload,
        prompts=prompts,
        study_name=study,
        storage_url=storage,
        resume=resume,
        trial_timeout_s=parse_duration(trial_timeout, "--trial-timeout"),
        sampler=sampler,
        seed=seed,
        batch=batch,
        llama_bench=_llama_bench_path(llama_bench),
    )
    run_study(request, console, remeasure=remeasure, gpus=_gpu_list(gpus) if gpus is not None else None, verify=verify)


def _gpu_list(text: str) -> list[str]:
    gpus = [item.strip() for item in text.split(",")]
    if not all(gpus) or len(set(gpus)) != len(gpus) or any(re.search(r"[^A-Za-z0-9-]", g) for g in gpus):
        raise AutotuneError(f"--gpus {text!r}: list distinct GPU indices or UUIDs, e.g. 0,1")
    return gpus


@app.command()
@user_errors
def worker(
    model: Path = typer.Argument(..., help="GGUF model file (the study's model)"),
    study: str = typer.Option(..., help="the study to join"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the study's database"),
    trials: Optional[int] = typer.Option(None, min=1, help="measured trials to add (default: until the study's budget is spent)"),
    time_budget: Optional[str] = typer.Option(None, "--time", help="wall-time budget of this worker, e.g. 15m"),
    llama_bench: Optional[Path] = typer.Option(None, "--llama-bench", envvar=LLAMA_BENCH_ENV, help=LLAMA_BENCH_HELP),
) -> None:
    """Join a study from another process or machine and add trials to it."""
    from autotune.search.workers import join_study
    from autotune.units import parse_duration

    interrupts.install()
    join_study(model, study, storage, trials, parse_duration(time_budget, "--time") if time_budget else None, console,
               _llama_bench_path(llama_bench))


def _llama_bench_path(binary: Path | None) -> str | None:
    """The llama-bench executable the llama_bench backend is given (None: the one it finds)."""
    import os

    if binary is None:
        return None
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise AutotuneError(f"--llama-bench (or ${LLAMA_BENCH_ENV}) {binary}: not an executable file")
    return str(binary.resolve())


@app.command()
@user_errors
def best(
    model: Path = typer.Argument(..., help="GGUF model file"),
    vram_cap: Optional[str] = typer.Option(None, "--vram-cap", help="only this cap"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """The best configs stored for MODEL on this machine (from the database, at once)."""
    from autotune.backends.base import Workload
    from autotune.search.actions import stored_best
    from autotune.served import ServedFigures

    rows = stored_best(model, vram_cap, storage)
    if as_json:
        print(json.dumps([
            {"vram_cap": r.vram_cap, "workload": r.workload_key, "tuned_on": r.result.get("workload"),
             "backend": r.backend, "config": r.config,
             "objective_mean": r.objective_mean, "objective_std": r.objective_std, "study": r.study_name,
             "served": r.result.get("served")}
            for r in rows], indent=2))
        return
    table = Table(title=f"best configs for {model.name} on this machine")
    for column in ("cap", "workload", "backend", "trials", "served", "peak VRAM", "config", "study"):
        table.add_column(column)
    for r in rows:
        peak = r.result.get("peak_vram_bytes")
        served = r.result.get("served")
        workload = f"{r.workload_key}\n{Workload.describe(r.result.get('workload'))}"
        table.add_row(_gib(r.vram_cap), workload, r.backend, f"{r.objective_mean:.1f} ± {r.objective_std:.1f}",
                      ServedFigures.summary(served) if served else "not served", _gib(peak) if peak else "n/a", json.dumps(r.config), r.study_name)
    console.print(table)


WINNER_WORKLOAD_HELP = "only the winner tuned on these prompts: the --workload FILE of its run, or built-in " \
                       "(default: the latest winner)"


def _prompts_digest(workload: str | None) -> str | None:
    from autotune.workloads.prompt_file import prompts_digest

    return None if workload is None else prompts_digest(workload)


@app.command()
@user_errors
def export(
    model: Path = typer.Argument(..., help="GGUF model file"),
    vram_cap: str = typer.Option(..., "--vram-cap", help="the cap the winner was tuned for"),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="llama-server | llama-bench | python | json (llama backends); serve | json (cache); "
        "default: the winning backend's own"),
    objective: str = typer.Option("decode", help="whose winner: decode | prefill | request"),
    workload: Optional[str] = typer.Option(None, "--workload", help=WINNER_WORKLOAD_HELP),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL"),
) -> None:
    """Print the stored winner's launch command (shell-quoted)."""
    from autotune.backends.base import Workload
    from autotune.search.actions import export_command, served_text

    command, row = export_command(model, vram_cap, fmt, objective, storage, _prompts_digest(workload))
    err_console.print(f"# {row.backend} winner of study {row.study_name}: {row.objective_mean:.1f} ± "
                      f"{row.objective_std:.1f} in its trials{served_text(row) or ', not served yet'}", highlight=False)
    err_console.print(f"# tuned on: {Workload.describe(row.result.get('workload'))}", highlight=False, soft_wrap=True)
    print(command)


@app.command()
@user_errors
@knob_options(CACHE_KNOBS, exclude=("vram_cap",))
def serve(
    model: Path = typer.Argument(..., help="GGUF model file"),
    vram_cap: Optional[str] = typer.Option(None, "--vram-cap", help="VRAM the runtime may use, e.g. 16G (with --best: whose winner)"),
    *,
    knobs: dict[str, Any],  # an option per cache knob (knob_options); those given override the base config
    config_file: Optional[Path] = typer.Option(None, "--config", help="a config as `autotune export --format json` writes it"),
    best: bool = typer.Option(False, "--best", help="the stored cache winner for this model, machine and --vram-cap"),
    objective: str = typer.Option("decode", help="with --best: whose winner: decode | prefill | request"),
    workload: Optional[str] = typer.Option(None, "--workload", help="with --best: " + WINNER_WORKLOAD_HELP),
    storage: Optional[str] = typer.Option(None, help="with --best: SQLAlchemy URL"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    save_every: str = typer.Option("30s", "--save-every", help="save the routing counts learned while serving this often (and at exit)"),
    record_trace: Optional[Path] = typer.Option(None, "--record-trace", help="record the experts every token selects "
                                                "(prompts and decode steps) into FILE, an .npz written with the counts; "
                                                "replay it with the runtime's replay= or studies.cache_simulation"),
) -> None:
    """Serve MODEL with the expert-cache runtime behind an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from autotune.serve.launch import resolve_config, serve_model
    from autotune.units import parse_duration

    config = resolve_config(model, vram_cap, knobs, config_file, best, objective, storage, _prompts_digest(workload))
    serve_model(model, config, host, port, console, parse_duration(save_every, "--save-every"), record_trace)


@app.command()
@user_errors
def dashboard(
    study: Optional[str] = typer.Argument(None, help="study name (default: the latest study in the database)"),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL (default: SQLite in the user data dir)"),
) -> None:
    """Watch a study live (running in another process, or finished) and steer it: sort, filter, copy, stop."""
    from autotune.storage import Database
    from autotune.tui.dashboard import DashboardApp
    from autotune.tui.study_view import StudyView, latest_study

    db = Database(storage)
    DashboardApp(StudyView(db, study or latest_study(db))).run()


@app.command()
@user_errors
def history(storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL")) -> None:
    """Studies in the database: model, cap, workload, trials, best, status."""
    from autotune.search.actions import study_history

    table = Table(title="studies")
    for column in ("study", "model", "cap", "workload", "trials", "best", "status", "created"):
        table.add_column(column)
    for row in study_history(storage):
        table.add_row(*row)
    console.print(table)


study_app = typer.Typer(help="Studies: reproducible evidence (studies/NAME/study.toml, results/, report.md).",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("run")
@user_errors
def study_run(
    directory: Path = typer.Argument(..., help="the study's directory (holds study.toml)"),
    time_budget: Optional[str] = typer.Option(None, "--time", help="stop between parts after this long, e.g. 9m"),
    models: Optional[Path] = typer.Option(None, help="where synthesized models are written (default: the user cache dir)"),
) -> None:
    """Run every part of the study that results/ does not hold yet; each is written as it finishes."""
    from autotune.studies.runner import StudyRunner
    from autotune.units import parse_duration

    interrupts.install()
    StudyRunner(directory, parse_duration(time_budget, "--time") if time_budget else None, models, console).run()


@app.command()
@user_errors
def report(directory: Path = typer.Argument(..., help="the study's directory")) -> None:
    """Write the study's report.md and PNG plots from its results/ (measures nothing)."""
    from autotune.studies.report import write_report

    written = write_report(directory)
    console.print("wrote " + ", ".join(str(path) for path in written))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

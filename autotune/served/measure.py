"""``measure_command``: start a served command, wait for it, measure it over HTTP, stop it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx

from autotune.isolation.gpu import TrialGpu
from autotune.isolation.vram import VramSampler
from autotune.served.client import measure_completions, random_prompts
from autotune.served.figures import ServedFigures, ServeFailed
from autotune.served.server import ServerProcess, free_port, resolve_program


def measure_command(
    argv: list[str], *, n_prompt: int, n_gen: int, repetitions: int, n_vocab: int,
    deadline_s: float, gpu: TrialGpu = TrialGpu(), seed: int = 0, env: dict[str, str] | None = None,
    prompts: list[list[int]] | None = None,
) -> ServedFigures:
    """Start argv (an exported command split with shlex; the tool appends --host 127.0.0.1
    --port P on a free port), wait for it to answer, measure, stop it (whole process group:
    SIGTERM, then SIGKILL after a grace period), return figures.

    ``deadline_s`` bounds the start (spawn until ``/health`` answers ok) and, separately, each
    request. The server runs on ``gpu`` (in its environment), which the VRAM sampler samples.
    ``env``: further variables the server gets on top of this process's environment.
    ``prompts``: the requests' prompts as token ids, a warm-up first and then one per repetition
    (a workload's own); None: ``1 + repetitions`` random prompts of ``n_prompt`` tokens. Raises
    ServeFailed (one line) when the command cannot start, exits, or does not answer in time.
    """
    if n_prompt < 1 or n_gen < 2 or repetitions < 1 or n_vocab < 1:
        raise ValueError(f"need n_prompt >= 1, n_gen >= 2, repetitions >= 1, n_vocab >= 1 "
                         f"(got {n_prompt}, {n_gen}, {repetitions}, {n_vocab})")
    command = resolve_program(argv)
    if prompts is None:
        prompts = random_prompts(1 + repetitions, n_prompt, n_vocab, seed)
    elif len(prompts) != 1 + repetitions or not all(prompts):
        raise ValueError(f"need a warm-up prompt and {repetitions} more, none empty (got {len(prompts)})")
    with tempfile.TemporaryDirectory(prefix="autotune-served-") as tmp, VramSampler(gpu) as vram:
        server_env = {**gpu.env(), **(env or {})}
        with ServerProcess(command, free_port(), Path(tmp, "server.log"), _label(argv), server_env) as server:
            vram.watch(server.pgid)
            with httpx.Client(base_url=server.url, trust_env=False) as http:  # no proxy for 127.0.0.1
                start_seconds = server.wait_ready(http, deadline_s)
                decode, prefill = measure_completions(http, server, prompts, n_gen, deadline_s)
                stats = _own_stats(http, deadline_s) if server.label == AUTOTUNE_SERVE else None
        if vram.lost:
            raise ServeFailed(f"{server.label}: {vram.lost}")
        return ServedFigures(decode, prefill, vram.peak, start_seconds, stats)


AUTOTUNE_SERVE = "autotune serve"


def _own_stats(http: httpx.Client, deadline_s: float) -> dict | None:
    """``autotune serve``'s statistics after the requests (None where it does not answer)."""
    try:
        response = http.get("/v1/stats", timeout=deadline_s)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _label(argv: list[str]) -> str:
    """How messages name the command: ``autotune serve``, ``llama-server``."""
    name = Path(argv[0]).name
    return f"{name} {argv[1]}" if name == "autotune" and len(argv) > 1 else name

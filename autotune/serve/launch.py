"""What ``autotune serve`` does, minus the argument parsing: resolve the config, load, serve."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from autotune.backends.base import Config
from autotune.backends.cache.knobs import normalize
from autotune.errors import AutotuneError
from autotune.units import format_size, parse_size

if TYPE_CHECKING:
    from autotune.model_info import ModelProfile


def _config_file(path: Path) -> Config:
    """A config as ``autotune export --format json`` writes it, or a bare config object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AutotuneError(f"cannot read --config {path}: {exc}") from None
    config = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(config, dict):
        raise AutotuneError(f"--config {path}: expected a JSON object of cache knobs")
    return config


def resolve_config(
    model: Path, vram_cap: str | None, knobs: dict[str, Any], config_file: Path | None, best: bool,
    objective: str, storage_url: str | None, prompts_digest: str | None = None,
) -> Config:
    """The config to serve: a base (``--config FILE``, ``--best``: the stored cache winner for
    the model, this machine and ``vram_cap``; else the defaults) with the flags given on top.
    With ``--best`` the winner keeps its own budget (the study's cap less what this machine
    measured above the predictions); ``knobs`` holds only flags the user gave."""
    if config_file is not None and best:
        raise AutotuneError("choose one of --config and --best")
    base: Config = {}
    if config_file is not None:
        base = _config_file(config_file)
    elif best:
        if vram_cap is None:
            raise AutotuneError("--best needs --vram-cap: whose winner to serve")
        from autotune.backends.registry import get_backend
        from autotune.search.actions import stored_winner

        row = stored_winner(model, vram_cap, objective, storage_url, backend="cache", prompts_digest=prompts_digest)
        get_backend("cache").restore_winner(row.config, row.result.get("kept", {}))
        base = dict(row.config)
    if vram_cap is not None and not best:
        base["vram_cap"] = parse_size(vram_cap)
    if "vram_cap" not in base:
        raise AutotuneError("say how much VRAM the runtime may use: --vram-cap (or --config, --best)")
    return normalize({**base, **knobs})


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is loaded: a port taken or a host that is not
    this machine's is a one-line error at once, not after the model's load."""
    if not 1 <= port <= 65535:
        raise AutotuneError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise AutotuneError(f"--host {host!r}: not an address of this machine ({exc})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AutotuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check_placement(profile: ModelProfile, config: Config) -> None:
    """A ``--placement`` file that is missing or another model's: a one-line error before the load."""
    if config.get("placement"):
        from autotune.cache_runtime.learned import read_placement

        read_placement(config["placement"], profile.fingerprint, (profile.n_moe_layers, profile.n_expert))


def check_trace_path(path: Path) -> None:
    """A ``--record-trace`` file that cannot be written: a one-line error before the load."""
    if path.is_dir():
        raise AutotuneError(f"--record-trace {path}: is a directory, not a file")
    if not path.parent.is_dir():
        raise AutotuneError(f"--record-trace {path}: the directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise AutotuneError(f"--record-trace {path}: cannot write in {path.parent}")


def serve_model(model: Path, config: Config, host: str, port: int, console: Console, save_every: float = 30.0,
                record_trace: Path | None = None) -> None:
    """Load the runtime with ``config`` and serve it until interrupted (SIGINT or SIGTERM);
    the routing counts it sees are saved every ``save_every`` seconds and at the end (they
    seed the next start's placement, ``learned.seed_counts``), and so is the routing trace
    of every token when ``record_trace`` names its file (``trace_file``)."""
    try:
        import uvicorn

        from autotune.serve.app import create_app
    except ImportError as exc:
        raise AutotuneError(f"serving needs the serve extra (pip install 'autotune[serve]'): {exc}") from None
    from autotune.backends.cache.knobs import cache_config
    from autotune.cache_runtime.engine import Engine
    from autotune.model_info import inspect_model
    from autotune.serve.session import Session

    check_placement(inspect_model(model), config)  # clear errors for a broken file before torch loads
    if record_trace is not None:
        check_trace_path(record_trace)
    sock = listening_socket(host, port)
    with console.status(f"loading {model.name} ..."):
        session = Session.load(lambda: Engine(model, cache_config=cache_config(config)), model.stem, config,
                               save_every, record_trace)
    engine = session.engine
    plan = engine.expert_cache.plan
    console.print(f"{model.name}: {sum(plan.slots)} of {len(plan.slots) * engine.cfg.n_expert} experts in VRAM "
                  f"slots (placed by {engine.placement_source}), planned peak {format_size(plan.peak)} "
                  f"of {format_size(config['vram_cap'])}, {engine.device}; context {config['max_ctx']} tokens",
                  highlight=False)
    engine.trace.enabled = record_trace is not None
    server = uvicorn.Server(uvicorn.Config(create_app(session), timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    finally:
        session.close()
        engine.close()
        sock.close()

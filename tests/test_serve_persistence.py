"""``autotune serve`` as a user starts it (a process of its own, on CPU, tiny preset): the
routing counts it learns are saved as it serves and at SIGTERM, so ``kill -9`` loses at most
one save interval; a ``--placement`` file seeds a fresh start; bad ports and placement files
are one-line errors before the model loads; ``--record-trace`` writes the routing trace of
every served token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from autotune.backends.cache.knobs import cache_config, normalize
from autotune.cache_runtime.budget import model_sizes, plan_with_slots
from autotune.cache_runtime.learned import counts_path, model_fingerprint, write_placement
from autotune.units import size_text

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")  # the GGUF's tokenizer
CTX = 64


@pytest.fixture(scope="module")
def cap(tiny_model: Path) -> int:
    return plan_with_slots(model_sizes(tiny_model), cache_config({"vram_cap": 1, "max_ctx": CTX}), 32).peak


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(model: Path, cap: int, data: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """Start ``autotune serve`` and wait until it answers; (process, base URL)."""
    port = _free_port()
    env = {**os.environ, "AUTOTUNE_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", str(model), "--vram-cap", size_text(cap),
                                "--ctx", str(CTX), "--port", str(port), *flags], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not answer within 120 s")


def _complete(url: str, n: int) -> None:
    answer = httpx.post(f"{url}/v1/completions", timeout=120,
                        json={"prompt": [5, 17, 300], "max_tokens": n, "temperature": 0, "ignore_eos": True})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == n, answer.text


def _saved(model: Path, data: Path) -> float:
    """Selections in the saved counts (0 where nothing is saved)."""
    os.environ["AUTOTUNE_DATA_DIR"] = str(data)  # counts_path reads the user's store from there
    try:
        path = counts_path(model_fingerprint(model))
    finally:
        del os.environ["AUTOTUNE_DATA_DIR"]
    return float(np.load(path).sum()) if path.exists() else 0.0


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
def test_kill_9_loses_at_most_one_save_interval_and_a_restart_places_by_what_was_saved(tiny_model: Path, cap: int,
                                                                                         tmp_path: Path):
    data = tmp_path / "data"
    process, url = _serve(tiny_model, cap, data, "--save-every", "1s")
    try:
        _complete(url, 12)
        assert _wait_for(lambda: _saved(tiny_model, data) > 0, 5), "nothing saved within 5 save intervals"
        first = _saved(tiny_model, data)
        _complete(url, 12)
        assert _wait_for(lambda: _saved(tiny_model, data) > first, 5), "the second request's counts were not saved"
        second = _saved(tiny_model, data)
        time.sleep(1.5)  # another interval, with nothing generated: the file holds the same counts
        assert _saved(tiny_model, data) == second
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _saved(tiny_model, data) == second  # all that was served before the last interval

    process, url = _serve(tiny_model, cap, data)
    try:
        stats = httpx.get(f"{url}/v1/stats", timeout=30).json()["cache"]
        assert stats["placement_source"] == "this machine's saved counts"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_sigterm_saves_the_counts_at_once(tiny_model: Path, cap: int, tmp_path: Path):
    data = tmp_path / "data"
    process, url = _serve(tiny_model, cap, data, "--save-every", "1h")
    _complete(url, 8)
    assert _saved(tiny_model, data) == 0  # no interval has passed
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn stops gracefully, then raises it again
    assert _saved(tiny_model, data) > 0


def test_a_placement_file_seeds_a_fresh_start(tiny_model: Path, cap: int, tmp_path: Path):
    sizes = model_sizes(tiny_model)
    counts = np.random.default_rng(0).integers(0, 50, (sizes.n_layers, sizes.n_expert)).astype(np.float64)
    placement = write_placement(tmp_path / "winner.json", counts, model_fingerprint(tiny_model), "a test")
    process, url = _serve(tiny_model, cap, tmp_path / "fresh data", "--placement", str(placement))
    try:
        stats = httpx.get(f"{url}/v1/stats", timeout=30).json()
        assert stats["cache"]["placement_source"] == "the placement file's counts"
        assert stats["config"]["placement"] == str(placement)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_engine_places_the_hottest_experts_of_a_placement_file(tiny_model: Path, cap: int, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    from autotune.cache_runtime.engine import Engine

    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    sizes = model_sizes(tiny_model)
    counts = np.random.default_rng(1).permutation(sizes.n_layers * sizes.n_expert).reshape(
        sizes.n_layers, sizes.n_expert).astype(np.float64)
    placement = write_placement(tmp_path / "winner.json", counts, model_fingerprint(tiny_model), "a test")
    config = normalize({"vram_cap": cap, "max_ctx": CTX, "eviction": "static", "placement": str(placement)})
    engine = Engine(tiny_model, device="cpu", kernels="torch", cache_config=cache_config(config))
    engine.persist_routing = False
    for layer, held in enumerate(engine.expert_cache.held):
        hottest = set(np.argsort(-counts[layer])[:len(held)].tolist())
        assert set(held) == hottest


def test_a_recorded_trace_holds_every_served_token_under_the_models_fingerprint(tiny_model: Path, cap: int,
                                                                                 tmp_path: Path):
    from autotune.cache_runtime.trace_file import Phase, read_trace

    path = tmp_path / "served.npz"
    process, url = _serve(tiny_model, cap, tmp_path / "data", "--save-every", "1s", "--record-trace", str(path))
    try:
        _complete(url, 5)  # a 3-token prompt: its prefill, then 4 decode steps
        assert _wait_for(lambda: path.exists(), 5), "no trace written within 5 save intervals"
        first = read_trace(path)
        assert list(first.calls()) == [(Phase.PREFILL_START, 3)] + [(Phase.DECODE, 1)] * 4
        _complete(url, 3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    trace = read_trace(path)  # the shutdown's save
    sizes = model_sizes(tiny_model)
    assert trace.fingerprint == model_fingerprint(tiny_model)
    assert (trace.n_layers, trace.n_expert, trace.k) == (sizes.n_layers, sizes.n_expert, sizes.n_expert_used)
    assert list(trace.calls())[5:] == [(Phase.PREFILL_START, 3)] + [(Phase.DECODE, 1)] * 2
    np.testing.assert_array_equal(trace.ids[:first.n_tokens], first.ids)


@pytest.mark.parametrize("flags, message", [
    (["--record-trace", "no/such/dir/t.npz"], "--record-trace no/such/dir/t.npz: the directory no/such/dir does not exist"),
    (["--record-trace", "."], "is a directory"),
    (["--port", "99999"], "--port 99999: a port is a number from 1 to 65535"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid': not an address of this machine"),
    (["--placement", "missing.json"], "does not exist"),
    (["--save-every", "0s"], "--save-every: the duration '0s' must be more than zero"),
])
def test_bad_serve_flags_are_one_line_errors_before_the_model_loads(tiny_model: Path, cap: int, tmp_path: Path,
                                                                     flags: list[str], message: str):
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "serve", str(tiny_model), "--vram-cap",
                           size_text(cap), *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_port_already_taken_is_a_one_line_error_before_the_model_loads(tiny_model: Path, cap: int, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from autotune.cli import app

    monkeypatch.setattr("autotune.cache_runtime.engine.Engine.__init__",
                        lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = CliRunner().invoke(app, ["serve", str(tiny_model), "--vram-cap", size_text(cap), "--port", str(port)])
    assert done.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in done.output, done.output

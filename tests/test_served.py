"""``autotune.served`` on CPU: a launch command started on a free port, measured over HTTP by the
project's rule, and stopped with its whole process group: ``autotune serve`` and ``llama-server``
on the tiny preset, a stand-in server that records what it was asked, and commands that exit at
once, never answer, or answer other than asked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from autotune.model_info import inspect_model
from autotune.served import ServedFigures, ServeFailed, measure_command
from autotune.served import measure as measure_module
from autotune.served import server as server_module
from autotune.served.server import ServerProcess, resolve_program

SMALL = {"n_prompt": 16, "n_gen": 8, "repetitions": 2}
START_DEADLINE_S = 300.0  # a loaded 2-core machine; the figures are not timed against anything

# A stand-in server: answers /health, and each completion with as many tokens as asked (MODE
# "ok", a millisecond each; "backwards", one token slower than many), always one (MODE "short")
# or an error (MODE "refuse", in OpenAI's shape); it appends each request's body to LOG.
STAND_IN = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
log, mode = sys.argv[1], sys.argv[2]
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer({"status": "ok"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(log, "a") as out:
            out.write(json.dumps(body) + "\\n")
        if mode == "refuse":
            return self.answer({"error": {"message": "the context holds 8 tokens", "type": "invalid_request_error"}}, 400)
        tokens = 1 if mode == "short" else body["max_tokens"]
        time.sleep((0.2 if tokens == 1 else 0) if mode == "backwards" else 0.001 * tokens)
        self.answer({"choices": [{"text": "x" * tokens, "finish_reason": "length"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": tokens}})
    def answer(self, data, status=200):
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[ServerProcess]:
    """The servers measure_command starts, to check afterwards that their groups are gone."""
    servers: list[ServerProcess] = []
    enter = ServerProcess.__enter__

    def recorded(self: ServerProcess) -> ServerProcess:
        servers.append(self)
        return enter(self)

    monkeypatch.setattr(ServerProcess, "__enter__", recorded)
    return servers


@pytest.fixture
def private_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """autotune serve saves the routing counts it saw when it stops: here, not in the user's data dir."""
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))


def assert_stopped(servers: list[ServerProcess]) -> None:
    assert servers, "no server was started"
    for server in servers:
        assert server.process is not None and server.process.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(server.pgid, 0)


def assert_measured(figures: ServedFigures, repetitions: int) -> None:
    for measured in (figures.decode_tps, figures.prefill_tps):
        assert len(measured.samples) == repetitions
        assert all(sample > 0 for sample in measured.samples)
        assert measured.mean > 0
    assert figures.start_seconds > 0
    assert ServedFigures.from_json(json.loads(json.dumps(figures.to_json()))) == figures


def n_vocab(model: Path) -> int:
    return inspect_model(model).n_vocab


@pytest.mark.slow
def test_autotune_serve_is_measured_over_http(tiny_model: Path, private_data_dir: None, started: list[ServerProcess]):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    torch = pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")  # the GGUF's tokenizer
    # 2G: the runtime's fixed need (CUDA context and margin included) is about 1.05 GiB even here
    argv = ["autotune", "serve", str(tiny_model), "--vram-cap", "2G", "--ctx", "256"]
    figures = measure_command(argv, **SMALL, n_vocab=n_vocab(tiny_model), deadline_s=START_DEADLINE_S)
    assert_measured(figures, SMALL["repetitions"])
    if not torch.cuda.is_available():
        assert figures.peak_vram_bytes is None
    # its own statistics after the requests: every completion's tokens, the cache's hit rate
    stats = figures.server_stats
    assert stats["requests"] >= 1 + 2 * SMALL["repetitions"] and 0 <= stats["cache"]["hit_rate"] <= 1
    assert ServedFigures.from_json(figures.to_json()) == figures
    assert_stopped(started)


@pytest.mark.slow
def test_llama_server_is_measured_over_http(tiny_model: Path, started: list[ServerProcess]):
    try:
        resolve_program(["llama-server"])
    except ServeFailed as exc:
        pytest.skip(str(exc))
    # one thread: two on a busy 2-core machine stall for up to seconds at llama.cpp's barriers; and
    # 64 tokens, as the tiny model decodes one in about a millisecond, within the noise of 8
    argv = ["llama-server", "-m", str(tiny_model), "-c", "256", "-t", "1", "-ngl", "0"]
    figures = measure_command(argv, **{**SMALL, "n_gen": 64}, n_vocab=n_vocab(tiny_model),
                              deadline_s=START_DEADLINE_S)
    assert_measured(figures, SMALL["repetitions"])
    assert figures.server_stats is None
    assert_stopped(started)


def test_the_requests_follow_the_measuring_rule(tmp_path: Path, started: list[ServerProcess]):
    log = tmp_path / "requests.jsonl"
    argv = [sys.executable, "-c", STAND_IN, str(log), "ok"]
    figures = measure_command(argv, n_prompt=12, n_gen=20, repetitions=3, n_vocab=50, deadline_s=60, seed=7)
    assert_measured(figures, 3)
    assert figures.peak_vram_bytes is None or figures.peak_vram_bytes >= 0
    bodies = [json.loads(line) for line in log.read_text().splitlines()]
    assert [body["max_tokens"] for body in bodies] == [20] + [1, 20] * 3  # a warm-up, then t1 and tN
    for body in bodies:
        assert body["temperature"] == 0 and body["ignore_eos"] is True
        assert body["cache_prompt"] is False and body["stream"] is False
        assert len(body["prompt"]) == 12 and all(0 <= token < 50 for token in body["prompt"])
    prompts = [tuple(body["prompt"]) for body in bodies]
    assert prompts[1] == prompts[2] and prompts[3] == prompts[4] and prompts[5] == prompts[6]
    assert len({prompts[0], prompts[1], prompts[3], prompts[5]}) == 4  # one prompt per repetition
    again = [sys.executable, "-c", STAND_IN, str(tmp_path / "again.jsonl"), "ok"]
    measure_command(again, n_prompt=12, n_gen=20, repetitions=3, n_vocab=50, deadline_s=60, seed=7)
    assert [json.loads(line)["prompt"] for line in (tmp_path / "again.jsonl").read_text().splitlines()] == \
        [list(prompt) for prompt in prompts]  # the seed decides the prompts
    assert_stopped(started)


@pytest.mark.parametrize("mode, message", [
    ("short", r"gave 1 tokens for a completion of 8 tokens \(finish_reason 'length'"),
    ("refuse", r"answered a completion of 8 tokens with status 400: the context holds 8 tokens$"),
])
def test_an_answer_other_than_asked_fails(tmp_path: Path, started: list[ServerProcess], mode: str, message: str):
    argv = [sys.executable, "-c", STAND_IN, str(tmp_path / "requests.jsonl"), mode]
    with pytest.raises(ServeFailed, match=message):
        measure_command(argv, **SMALL, n_vocab=50, deadline_s=60)
    assert_stopped(started)


def test_a_decode_that_cannot_be_timed_fails_after_retries(tmp_path: Path, started: list[ServerProcess]):
    log = tmp_path / "requests.jsonl"
    argv = [sys.executable, "-c", STAND_IN, str(log), "backwards"]
    with pytest.raises(ServeFailed, match=r"8 tokens came no later than 1 \(.*, 3 times\)"):
        measure_command(argv, **SMALL, n_vocab=50, deadline_s=60)
    assert [json.loads(line)["max_tokens"] for line in log.read_text().splitlines()] == [8] + [1, 8] * 3
    assert_stopped(started)


def test_a_command_that_exits_at_once_fails_with_its_status(tiny_model: Path, started: list[ServerProcess]):
    argv = [sys.executable, "-c", "import sys; print('starting'); print('the last words'); sys.exit(3)"]
    with pytest.raises(ServeFailed, match=r"exited with status 3: the last words$"):
        measure_command(argv, **SMALL, n_vocab=50, deadline_s=START_DEADLINE_S)
    # a bad flag: Typer's usage error, its panel's frame left out
    argv = ["autotune", "serve", str(tiny_model), "--vram-cap", "1G", "--no-such-flag"]
    with pytest.raises(ServeFailed, match=r"^autotune serve exited with status 2: No such option: --no-such-flag"):
        measure_command(argv, **SMALL, n_vocab=50, deadline_s=START_DEADLINE_S)
    assert_stopped(started)


def test_a_server_that_does_not_answer_in_time_is_stopped(
    tiny_model: Path, private_data_dir: None, started: list[ServerProcess], monkeypatch: pytest.MonkeyPatch
):
    argv = ["autotune", "serve", str(tiny_model), "--vram-cap", "2G", "--ctx", "256"]
    with pytest.raises(ServeFailed, match=r"^autotune serve did not answer .*/health within the 0.5 s deadline$"):
        measure_command(argv, **SMALL, n_vocab=50, deadline_s=0.5)
    # one that ignores SIGTERM is killed after the grace period
    monkeypatch.setattr(server_module, "STOP_GRACE_S", 0.5)
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
    with pytest.raises(ServeFailed, match=r"within the 2 s deadline$"):
        measure_command(stubborn, **SMALL, n_vocab=50, deadline_s=2)
    assert started[-1].process.returncode == -9  # SIGKILL
    assert_stopped(started)


def test_ctrl_c_while_measuring_stops_the_server(tmp_path: Path, started: list[ServerProcess],
                                                monkeypatch: pytest.MonkeyPatch):
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(measure_module, "measure_completions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_command([sys.executable, "-c", STAND_IN, str(tmp_path / "requests.jsonl"), "ok"], **SMALL,
                        n_vocab=50, deadline_s=60)
    assert_stopped(started)


def test_a_missing_program_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(server_module.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ServeFailed, match=r"^llama-server not found on PATH \("):
        measure_command(["llama-server", "-m", "x.gguf"], **SMALL, n_vocab=50, deadline_s=10)
    # autotune without its script on PATH runs as this Python's module
    assert resolve_program(["autotune", "serve", "m.gguf"]) == [sys.executable, "-m", "autotune.cli", "serve", "m.gguf"]


def test_a_workloads_own_prompts_are_the_requests(tmp_path: Path, started: list[ServerProcess]):
    """``autotune run --workload``: its finalists are served the prompts the trials measured."""
    from autotune.backends.base import Workload
    from autotune.search.verify import _served_prompts

    workload = Workload(n_prompt=4, n_gen=20, repetitions=3, prompts=((5, 6, 7), (8, 9, 10, 11, 12)))
    prompts = _served_prompts(workload)
    assert prompts == [[5, 6, 7], [5, 6, 7], [8, 9, 10, 11, 12], [5, 6, 7]]  # the last one warms up first
    assert _served_prompts(Workload(repetitions=3)) is None  # random prompts, as its trials measured
    log = tmp_path / "requests.jsonl"
    argv = [sys.executable, "-c", STAND_IN, str(log), "ok"]
    assert_measured(measure_command(argv, n_prompt=4, n_gen=20, repetitions=3, n_vocab=50, deadline_s=60,
                                    prompts=prompts), 3)
    sent = [json.loads(line)["prompt"] for line in log.read_text().splitlines()]
    assert sent == [prompts[0]] + [prompt for prompt in prompts[1:] for _ in range(2)]  # t1 and tN of each
    with pytest.raises(ValueError, match="warm-up prompt and 3 more"):
        measure_command(argv, n_prompt=4, n_gen=20, repetitions=3, n_vocab=50, deadline_s=60, prompts=prompts[:2])
    assert_stopped(started)

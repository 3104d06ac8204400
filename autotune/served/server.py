"""A served command as a child process: its program found, started on a free port in a process
group of its own with its output in a file, waited for until ``/health`` answers, and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from autotune.served.figures import ServeFailed

STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL this much later
POLL_S = 0.1
HEALTH_TIMEOUT_S = 5.0  # one /health request; llama-server answers 503 at once while it loads
BOX_DRAWING = "".join(chr(code) for code in range(0x2500, 0x2580))  # Typer's error panels


def resolve_program(argv: list[str]) -> list[str]:
    """``argv`` with its program made runnable: ``autotune`` as printed when it is on PATH, else
    this Python's ``-m autotune.cli``; another program from PATH, else beside this Python (a
    virtualenv's bin, where ``scripts/setup.sh`` puts llama-server)."""
    if not argv:
        raise ServeFailed("the served command is empty")
    program, rest = argv[0], argv[1:]
    if program == "autotune":
        return argv if shutil.which("autotune") else [sys.executable, "-m", "autotune.cli", *rest]
    if os.sep in program:
        return argv
    found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
    if found is None:
        hint = " (install llama.cpp, or build it with scripts/setup.sh)" if program == "llama-server" else ""
        raise ServeFailed(f"{program} not found on PATH{hint}")
    return [found, *rest]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def last_line(log: Path) -> str:
    """The last line of ``log`` with words in it, without the frame of a Typer error panel."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 16384))
        text = handle.read().decode("utf-8", errors="replace")
    lines = [line.strip(BOX_DRAWING + " \t") for line in text.splitlines()]
    worded = [line for line in lines if any(char.isalnum() for char in line)]
    return worded[-1] if worded else ""


class ServerProcess:
    """``argv`` listening on 127.0.0.1:``port`` from ``__enter__`` until ``__exit__`` stops its group."""

    def __init__(self, argv: list[str], port: int, log: Path, label: str, env: dict[str, str] | None = None):
        self.argv = [*argv, "--host", "127.0.0.1", "--port", str(port)]
        self.env = env or {}  # variables set for the server on top of this process's environment
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.label = label
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def pgid(self) -> int:
        """The server's process group (it leads a session of its own)."""
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> "ServerProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}  # a Python server's last words reach the log
        with self.log.open("wb") as output:
            self.started = time.monotonic()
            try:
                self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=output,
                                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
            except OSError as exc:
                raise ServeFailed(f"cannot start {self.label}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exited(self, wait_s: float = 0.0) -> str | None:
        """Why the server is gone (its exit status and last line of output), or None while it
        still runs ``wait_s`` from now."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=wait_s) if wait_s else self.process.poll()
        except subprocess.TimeoutExpired:
            return None
        if code is None:
            return None
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        line = last_line(self.log)
        return f"{self.label} {how}" + (f": {line}" if line else "")

    def wait_ready(self, http: httpx.Client, deadline_s: float) -> float:
        """Seconds from spawn until ``GET /health`` answered 200; ServeFailed when the server
        exits first or ``deadline_s`` passes."""
        while True:
            reason = self.exited()
            if reason is not None:
                raise ServeFailed(reason)
            try:
                if http.get("/health", timeout=HEALTH_TIMEOUT_S).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() - self.started > deadline_s:
                raise ServeFailed(f"{self.label} did not answer {self.url}/health within the {deadline_s:g} s deadline")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after the grace period."""
        if self.process is None:
            return
        try:
            _signal_group(self.pgid, signal.SIGTERM)
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also when a second Ctrl-C cuts the grace period short
            _signal_group(self.pgid, signal.SIGKILL)  # and children that outlived their leader
            self.process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already

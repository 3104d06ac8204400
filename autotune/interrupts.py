"""Ctrl-C and SIGTERM that are never lost.

Both stop a study as Ctrl-C does: finished trials stay, the running ones are queued again.
Python raises the KeyboardInterrupt wherever the main thread is when the signal arrives; where
that is inside a finalizer (a weakref callback, a ``__del__``), Python prints it as "ignored"
and goes on as if nothing had happened. So the handler also records the request, and the tuner
calls ``raise_if_requested`` between trials, which raises it again.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_requested = threading.Event()


def install() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


def raise_if_requested() -> None:
    """Raise the KeyboardInterrupt of a signal received since the last call, once."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt

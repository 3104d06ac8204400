"""Ctrl-C and SIGTERM that are never lost.

Both stop a study as Ctrl-C does: finished trials stay, the running ones are queued again.
Python raises the KeyboardInterrupt wherever the main thread is when the signal arrives; where
that is inside a finalizer (a weakref callback, a ``__del__``), Python prints it as "ignored"
and goes on as if nothing had happened. So the handler also records the request, and the tuner
calls ``raise_if_requested`` between trials, which raises it again. Inside ``deferred()`` the
handler only records the request, and the block's end raises it: for steps that must not be
cut in two (a trial created in the storage but not yet claimed by its worker).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()
_deferring = 0  # how many deferred() blocks the main thread is in


def install() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    if not _deferring:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal's KeyboardInterrupt until the block has run to its end. Off the main thread
    (the dashboard's study) it holds nothing: Python raises the signal's exception on the main
    thread only, which must not lose it while another thread is in a block."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_if_requested()


def raise_if_requested() -> None:
    """Raise the KeyboardInterrupt of a signal received since the last call, once."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt

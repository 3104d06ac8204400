"""Generated tokens to text that may be sent: stop strings cut it, and text that may still
become a stop string (or a character whose bytes span tokens) is held back until it cannot."""

from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class TextStream:
    """The text of the tokens added so far; ``add`` returns what became safe to send."""

    def __init__(self, piece: Callable[[int], bytes], stop: tuple[str, ...] = ()):
        self.piece = piece
        self.stop = tuple(s for s in stop if s)
        self.data = bytearray()
        self.sent = 0  # characters handed out
        self.stopped = False  # a stop string appeared: the text ends before it

    def _text(self) -> str:
        return self.data.decode(errors="replace")

    def _held(self, text: str) -> int:
        """Characters at the end that may yet turn into a stop string or a complete character."""
        held = len(text) - len(text.rstrip(REPLACEMENT))
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    held = max(held, k)
                    break
        return held

    def add(self, token: int) -> str:
        self.data += self.piece(token)
        text = self._text()
        cuts = [index for index in (text.find(stop, max(0, self.sent - len(stop))) for stop in self.stop) if index >= 0]
        if cuts:
            self.stopped = True
            end = min(cuts)
        else:
            end = len(text) - self._held(text)
        delta = text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def rest(self) -> str:
        """What was held back, once no token follows (nothing after a stop string)."""
        if self.stopped:
            return ""
        text = self._text()
        delta = text[self.sent:]
        self.sent = len(text)
        return delta

"""How each decode step's selected experts reach the host, which counts them (``expert_cache``).

On the CPU they are the host's already (``HostSelections``). On a GPU the step's ids go by an
asynchronous copy into a ring of pinned host memory, whose events are polled, never waited
on, unless the ring is full (``SelectionRing``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Iterator

import numpy as np
import torch


class SelectionFeed(ABC):
    @abstractmethod
    def full(self) -> bool:
        """Whether every ring slot holds a step the host has not read yet."""

    @abstractmethod
    def wait_oldest(self) -> None:
        """Wait until the oldest step in flight has reached the host."""

    @abstractmethod
    def push(self, ids: torch.Tensor) -> None:
        """Send a step's selections (layers, k) to the host."""

    @abstractmethod
    def landed(self) -> Iterator[np.ndarray]:
        """The steps' selections (layers, k) int64 that have reached the host, in step order."""


class HostSelections(SelectionFeed):
    def __init__(self):
        self._steps: deque[np.ndarray] = deque()

    def full(self) -> bool:
        return False

    def wait_oldest(self) -> None:
        pass

    def push(self, ids: torch.Tensor) -> None:
        self._steps.append(ids.numpy().astype(np.int64))

    def landed(self) -> Iterator[np.ndarray]:
        while self._steps:
            yield self._steps.popleft()


class SelectionRing(SelectionFeed):
    def __init__(self, ring: torch.Tensor):
        """``ring``: pinned (steps, layers, k) int64 host memory."""
        self.ring = ring
        self._events: list[tuple[torch.cuda.Event, int]] = []  # (copied, ring slot)
        self._next = 0

    def full(self) -> bool:
        return len(self._events) >= len(self.ring)

    def wait_oldest(self) -> None:
        self._events[0][0].synchronize()

    def push(self, ids: torch.Tensor) -> None:
        slot = self._next
        self._next = (slot + 1) % len(self.ring)
        self.ring[slot].copy_(ids.to(torch.int64), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events.append((event, slot))

    def landed(self) -> Iterator[np.ndarray]:
        while self._events and self._events[0][0].query():
            _, slot = self._events.pop(0)
            yield self.ring[slot].numpy().copy()

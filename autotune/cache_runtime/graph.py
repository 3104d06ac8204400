"""One decode step captured as a CUDA graph.

The step reads its input token from a (1,) device tensor ``token`` and the position from the KV cache's device
``pos``, and it writes the chosen next token back into ``token`` and advances ``pos``: so
replays chain on the device with no host work between them, and the host may overwrite
``token`` before a replay to force an input. Experts are reached through the device table
of addresses, so moving an expert (repointing its entry) needs no re-capture.

Where the host takes part in every layer of a step (the CPU computes the expert cache's
misses), the step is a chain of graphs instead (``SegmentedDecodeGraph``): the host launches
each and does its part between them, with no kernel launched one by one; or one graph whose
kernels wait for the host's part on flags in host memory (``flag_handoff``), which the host
serves after the launch.
"""

from __future__ import annotations

from typing import Callable

import torch

Step = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def warm_up(step: Step, token: torch.Tensor, pos: torch.Tensor, steps: int) -> torch.cuda.Stream:
    """Run ``step`` eagerly ``steps`` times on a side stream (compiles the kernels, outside the
    capture), then restore ``token`` and ``pos``; returns that stream for the capture."""
    saved = token.clone(), pos.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(steps):
            step(token)
    torch.cuda.current_stream().wait_stream(stream)
    token.copy_(saved[0])
    pos.copy_(saved[1])
    return stream


class DecodeGraph:
    def __init__(self, step: Step, token: torch.Tensor, pos: torch.Tensor, warmup: int = 2):
        """``step(token)`` -> static outputs; ``token`` and ``pos`` are restored after the warm-up."""
        warm_up(step, token, pos, warmup)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(token)

    def replay(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.outputs


class Segments:
    """A decode step captured as a chain of graphs, cut where the host takes part in the step
    (the CPU computing a layer's misses). ``cut(action)`` ends the graph being captured and
    starts the next; at replay the host runs ``action`` after that graph's launch. The graphs
    share one memory pool and replay in the order they were captured, as sharing requires.
    ``defer(action)`` cuts nothing: the host runs ``action`` once the whole chain is launched
    (in capture order), for host work the device waits for inside a graph (``flag_handoff``)."""

    def __init__(self):
        self._pool = torch.cuda.graph_pool_handle()
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.actions: list[Callable[[], None]] = []  # actions[i] runs after graphs[i] is launched
        self.deferred: list[Callable[[], None]] = []

    def begin(self) -> None:
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self._pool)
        self.graphs.append(graph)

    def cut(self, action: Callable[[], None]) -> None:
        self.graphs[-1].capture_end()
        self.actions.append(action)
        self.begin()

    def defer(self, action: Callable[[], None]) -> None:
        self.deferred.append(action)

    def end(self) -> None:
        self.graphs[-1].capture_end()

    def replay(self) -> None:
        for i, graph in enumerate(self.graphs):
            graph.replay()
            if i < len(self.actions):
                self.actions[i]()
        for action in self.deferred:
            action()


class SegmentedDecodeGraph:
    """``DecodeGraph`` for a step the host takes part in: ``step`` cuts the capture through the
    ``Segments`` that ``attach`` hands to whoever cuts it (and ``attach(None)`` takes back)."""

    def __init__(self, step: Step, token: torch.Tensor, pos: torch.Tensor,
                 attach: Callable[[Segments | None], None], warmup: int = 2):
        stream = warm_up(step, token, pos, warmup)
        torch.cuda.synchronize()
        self.segments = Segments()
        attach(self.segments)
        try:
            with torch.cuda.stream(stream):
                self.segments.begin()
                self.outputs = step(token)
                self.segments.end()
        finally:
            attach(None)
        torch.cuda.synchronize()

    def replay(self) -> tuple[torch.Tensor, ...]:
        self.segments.replay()
        return self.outputs

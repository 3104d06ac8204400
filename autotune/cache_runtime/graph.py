"""One decode step captured as a CUDA graph.

The step reads its input token from a (1,) device tensor ``token`` and the position from the KV cache's device
``pos``, and it writes the chosen next token back into ``token`` and advances ``pos``: so
replays chain on the device with no host work between them, and the host may overwrite
``token`` before a replay to force an input. Experts are reached through the device table
of addresses, so moving an expert (repointing its entry) needs no re-capture.

Where the host takes part in every layer of a step (the CPU computes the expert cache's
misses), the step's kernels wait for the host's part on flags in host memory
(``flag_handoff``), and the host serves those parts after the graph's launch
(``HostServedDecodeGraph``).
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


HostActions = list[Callable[[], None]]


class HostServedDecodeGraph:
    """``DecodeGraph`` for a step the host takes part in. While ``step`` is captured, ``attach``
    hands it the list of host actions (``attach(None)`` takes it back): the host's part of
    each layer, which the graph's kernels wait for (``flag_handoff``). At replay the host runs
    them in capture order once the graph is launched."""

    def __init__(self, step: Step, token: torch.Tensor, pos: torch.Tensor,
                 attach: Callable[[HostActions | None], None], warmup: int = 2):
        stream = warm_up(step, token, pos, warmup)
        torch.cuda.synchronize()
        self.host_actions: HostActions = []
        self.graph = torch.cuda.CUDAGraph()
        attach(self.host_actions)
        try:
            with torch.cuda.stream(stream):
                self.graph.capture_begin()
                self.outputs = step(token)
                self.graph.capture_end()
        finally:
            attach(None)
        torch.cuda.synchronize()

    def replay(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        for action in self.host_actions:
            action()
        return self.outputs

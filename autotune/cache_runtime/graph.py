"""One decode step captured as a CUDA graph.

The step reads its input token from a (1,) device tensor ``token`` and the position from the KV cache's device
``pos``, and it writes the chosen next token back into ``token`` and advances ``pos``: so
replays chain on the device with no host work between them, and the host may overwrite
``token`` before a replay to force an input. Experts are reached through the device table
of addresses, so moving an expert (repointing its entry) needs no re-capture.
"""

from __future__ import annotations

from typing import Callable

import torch

Step = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class DecodeGraph:
    def __init__(self, step: Step, token: torch.Tensor, pos: torch.Tensor, warmup: int = 2):
        """``step(token)`` -> static outputs; ``token`` and ``pos`` are restored after the warm-up."""
        saved = token.clone(), pos.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # compiles the kernels, outside the capture
                step(token)
        torch.cuda.current_stream().wait_stream(stream)
        token.copy_(saved[0])
        pos.copy_(saved[1])
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(token)

    def replay(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.outputs

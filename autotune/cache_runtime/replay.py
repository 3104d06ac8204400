"""Replaying a recorded routing trace in place of the router (``Engine(..., replay=trace)``).

At the replay's t-th token (counted over every token the engine processes, prompts and
decode steps alike, from the engine's load), each layer selects the trace's experts of
token t; a run longer than the trace starts it over. The selected experts' weights stay the
router's: its gate over all experts, gathered at the trace's ids (renormalized and scaled as
the model's are, ``routing.expert_weights``). So an expert cache sees exactly the recorded routing: a
policy benchmarked on a replay is benchmarked on the routing a real workload had.

The hook (``ops.RoutingHook``) overwrites the ids and weights the router wrote, in place,
from a cursor on the device: the CPU path and a captured GPU decode step run the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from autotune.cache_runtime.ops import RoutingHook
from autotune.cache_runtime.routing import expert_weights, gate
from autotune.cache_runtime.trace_file import Phase, Trace

if TYPE_CHECKING:
    from autotune.cache_runtime.engine import Engine
    from autotune.cache_runtime.hparams import ModelConfig


class TraceReplay(RoutingHook):
    def __init__(self, trace: Trace, device: torch.device, cfg: ModelConfig):
        self.ids = torch.from_numpy(trace.ids.astype(np.int64)).to(device)  # (tokens, MoE layers, k)
        self.n_tokens, self.last_layer = trace.n_tokens, trace.n_layers - 1
        self.cfg = cfg
        self.cursor = torch.zeros(1, dtype=torch.int64, device=device)  # the next token's row

    def after_route(self, layer: int, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
        n = ids.shape[0]
        rows = (self.cursor + torch.arange(n, device=self.cursor.device)) % self.n_tokens
        chosen = self.ids[rows, layer]
        cfg = self.cfg
        chosen_weights = expert_weights(gate(logits, cfg.gating), chosen, cfg.norm_topk, cfg.expert_weights_scale,
                                        cfg.gating)
        ids.copy_(chosen)
        weights.copy_(chosen_weights)
        if layer == self.last_layer:
            self.cursor.add_(n)

    def device_state(self) -> list[torch.Tensor]:
        return [self.cursor]


def drive(engine: Engine, trace: Trace) -> None:
    """Run the calls that recorded ``trace`` on ``engine`` (which replays it): each prompt as a
    new sequence of as many tokens (token 0: the trace decides the routing), each decode
    step as one greedy step. The expert cache then sees the trace's workload, step for step."""
    for phase, n in trace.calls():
        if phase == Phase.DECODE:
            engine.decode()
        else:
            engine.start([0] * n)

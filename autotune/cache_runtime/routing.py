"""Expert selection, and the routing trace: which experts each token chose, per layer."""

from __future__ import annotations

import numpy as np
import torch

from autotune.cache_runtime.trace_file import Phase


def route(logits: torch.Tensor, k: int, norm_topk: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, top k, optionally renormalized: (weights, ids), each (tokens, k)."""
    probs = logits.float().softmax(-1)
    weights, ids = probs.topk(k, dim=-1)
    if norm_topk:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


class RoutingTrace:
    """Selected expert ids of every token a runtime processes while ``enabled``, and each
    token's ``Phase``.

    Recording only keeps device tensors (no host sync per token); ``ids()`` gathers them to
    the host (so a long recording holds device memory only between two reads).
    """

    def __init__(self, n_layers: int, n_expert: int):
        self.n_layers = n_layers
        self.n_expert = n_expert
        self.enabled = False
        self._chunks: list[torch.Tensor] = []
        self._gathered: np.ndarray | None = None
        self._phases: list[np.ndarray] = []

    def record(self, ids: torch.Tensor, phase: Phase) -> None:
        """ids: (tokens, layers, k) expert ids of the tokens just processed; ``phase``: its
        first token's (PREFILL_START: the others are PREFILL)."""
        if self.enabled:
            self._chunks.append(ids.to(torch.int16, copy=True))
            codes = np.full(len(ids), Phase.PREFILL if phase == Phase.PREFILL_START else phase, dtype=np.int8)
            codes[:1] = phase
            self._phases.append(codes)

    def clear(self) -> None:
        self._chunks.clear()
        self._gathered = None
        self._phases.clear()

    def ids(self) -> np.ndarray:
        """(tokens, layers, k) int16, in the order the tokens were processed."""
        if self._chunks:
            parts = ([] if self._gathered is None else [self._gathered]) + [torch.cat(self._chunks).cpu().numpy()]
            self._gathered = np.concatenate(parts)
            self._chunks.clear()
        if self._gathered is None:
            return np.zeros((0, self.n_layers, 0), dtype=np.int16)
        return self._gathered

    def phases(self) -> np.ndarray:
        """(tokens,) int8 ``Phase`` of each token in ``ids()``."""
        if not self._phases:
            return np.zeros(0, dtype=np.int8)
        self._phases[:] = [np.concatenate(self._phases)]
        return self._phases[0]

    def counts(self) -> np.ndarray:
        """(layers, n_expert) how often each expert was selected."""
        ids = self.ids()
        counts = np.zeros((self.n_layers, self.n_expert), dtype=np.int64)
        for layer in range(self.n_layers):
            counts[layer] = np.bincount(ids[:, layer].ravel(), minlength=self.n_expert)
        return counts

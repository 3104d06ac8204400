"""Expert selection, and the routing trace: which experts each token chose, per layer."""

from __future__ import annotations

import numpy as np
import torch


def route(logits: torch.Tensor, k: int, norm_topk: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, top k, optionally renormalized: (weights, ids), each (tokens, k)."""
    probs = logits.float().softmax(-1)
    weights, ids = probs.topk(k, dim=-1)
    if norm_topk:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


class RoutingTrace:
    """Selected expert ids of every token a runtime processes while ``enabled``.

    Recording only keeps device tensors (no host sync per token); ``ids()`` gathers them.
    """

    def __init__(self, n_layers: int, n_expert: int):
        self.n_layers = n_layers
        self.n_expert = n_expert
        self.enabled = False
        self._chunks: list[torch.Tensor] = []

    def record(self, ids: torch.Tensor) -> None:
        """ids: (tokens, layers, k) expert ids of the tokens just processed."""
        if self.enabled:
            self._chunks.append(ids.to(torch.int16, copy=True))

    def clear(self) -> None:
        self._chunks.clear()

    def ids(self) -> np.ndarray:
        """(tokens, layers, k) int16, in the order the tokens were processed."""
        if not self._chunks:
            return np.zeros((0, self.n_layers, 0), dtype=np.int16)
        return torch.cat(self._chunks).cpu().numpy()

    def counts(self) -> np.ndarray:
        """(layers, n_expert) how often each expert was selected."""
        ids = self.ids()
        counts = np.zeros((self.n_layers, self.n_expert), dtype=np.int64)
        for layer in range(self.n_layers):
            counts[layer] = np.bincount(ids[:, layer].ravel(), minlength=self.n_expert)
        return counts

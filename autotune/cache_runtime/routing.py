"""Expert selection, and the routing trace: which experts each token chose, per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from autotune.cache_runtime.trace_file import Phase

if TYPE_CHECKING:
    from autotune.cache_runtime.hparams import ModelConfig


def gate(logits: torch.Tensor, gating: str) -> torch.Tensor:
    """The router's scores over all experts: softmax, each expert's sigmoid, or the logits
    themselves ("softmax_weight": the softmax comes after the top k, ``expert_weights``)."""
    if gating == "sigmoid":
        return logits.float().sigmoid()
    return logits.float() if gating == "softmax_weight" else logits.float().softmax(-1)


def expert_weights(probs: torch.Tensor, ids: torch.Tensor, norm_topk: bool, scale: float = 0.0,
                   gating: str = "softmax") -> torch.Tensor:
    """The selected experts' weights: their gate scores (softmax over the k of them for
    "softmax_weight"), optionally renormalized to sum to 1 (the sum clamped as llama.cpp
    does), times ``scale`` (0 or 1: unscaled)."""
    weights = probs.gather(-1, ids)
    if gating == "softmax_weight":
        weights = weights.softmax(-1)
    if norm_topk:
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=6.103515625e-5)
    if scale not in (0.0, 1.0):
        weights = weights * scale
    return weights


def best_groups_only(scores: torch.Tensor, n_groups: int, n_used: int) -> torch.Tensor:
    """``scores`` (tokens, n_expert) with every expert outside the ``n_used`` best of
    ``n_groups`` equal groups at -inf; a group scores the sum of its two best experts
    (DeepSeek-V3's group-limited routing, as llama.cpp's ``build_moe_ffn``)."""
    grouped = scores.view(*scores.shape[:-1], n_groups, -1)
    best = grouped.topk(2, dim=-1).values.sum(-1).topk(n_used, dim=-1).indices
    keep = torch.zeros(grouped.shape[:-1], dtype=torch.bool, device=scores.device).scatter_(-1, best, True)
    return grouped.masked_fill(~keep[..., None], float("-inf")).view_as(scores)


def route(logits: torch.Tensor, k: int, norm_topk: bool, gating: str = "softmax",
          selection_bias: torch.Tensor | None = None, scale: float = 0.0,
          groups: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate over all experts (``gate``), top k, weights by ``expert_weights``: (weights, ids),
    each (tokens, k). ``selection_bias`` (n_expert,) shifts the scores the top k is chosen by,
    not the weights (DeepSeek-V3's and GLM-4.5's expert-bias correction). ``groups`` (count,
    used): with more than one group, the top k comes from the best groups only (``best_groups_only``)."""
    probs = gate(logits, gating)
    chosen_by = probs if selection_bias is None else probs + selection_bias
    if groups[0] > 1:
        chosen_by = best_groups_only(chosen_by, *groups)
    ids = chosen_by.topk(k, dim=-1).indices
    return expert_weights(probs, ids, norm_topk, scale, gating), ids


def route_layer(logits: torch.Tensor, cfg: ModelConfig, selection_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``route`` with the model's gate, top k, expert groups, renormalization and scale."""
    return route(logits, cfg.n_expert_used, cfg.norm_topk, cfg.gating, selection_bias, cfg.expert_weights_scale,
                 (cfg.n_expert_groups, cfg.n_group_used))


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

"""Statistics of a routing trace: static concentration and temporal locality, per layer.

A trace is ``experts[layer, token, j]``, the ids each token selects (top-k), tokens in the
order one sequence runs. The same statistics are published for real models (see
``autotune.synth.real_routing``), so a synthetic file's measured routing is compared to them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def selection_mask(experts: np.ndarray, n_expert: int) -> np.ndarray:
    """(layers, tokens, experts) booleans: which experts each token selects."""
    n_layers, n_tokens, _ = experts.shape
    mask = np.zeros((n_layers, n_tokens, n_expert), dtype=bool)
    np.put_along_axis(mask, experts, True, axis=2)
    return mask


def top_share(experts: np.ndarray, n_expert: int, top: int) -> np.ndarray:
    """Per layer: the share of all selections that go to the layer's ``top`` most selected experts."""
    counts = selection_mask(experts, n_expert).sum(axis=1)
    ranked = np.sort(counts, axis=1)[:, ::-1]
    return ranked[:, :top].sum(axis=1) / counts.sum(axis=1)


def adjacent_overlap(experts: np.ndarray, n_expert: int) -> float:
    """Share of a token's selected experts that the previous token selected too (all layers)."""
    mask = selection_mask(experts, n_expert)
    shared = (mask[:, 1:] & mask[:, :-1]).sum()
    return float(shared / mask[:, 1:].sum())


def lru_hit_rates(experts: np.ndarray, n_expert: int, slots: Sequence[int]) -> dict[int, float]:
    """Hit rate of a per-layer LRU cache of each size in ``slots``, over all tokens after the first.

    The cache before token t holds the ``s`` experts used most recently (ties: lower id); a
    token's selections are looked up together, as the expert cache runtime does.
    """
    n_layers, n_tokens, k = experts.shape
    hits = dict.fromkeys(slots, 0)
    ids = np.arange(n_expert)
    for layer in range(n_layers):
        last_use = np.full(n_expert, -1, dtype=np.int64)
        last_use[experts[layer, 0]] = 0
        for t in range(1, n_tokens):
            rank = np.empty(n_expert, dtype=np.int64)
            rank[np.lexsort((ids, -last_use))] = ids
            chosen = experts[layer, t]
            seen = last_use[chosen] >= 0
            for s in slots:
                hits[s] += int(np.count_nonzero(seen & (rank[chosen] < s)))
            last_use[chosen] = t
    lookups = n_layers * (n_tokens - 1) * k
    return {s: hits[s] / lookups for s in slots}

"""Which experts sit in VRAM slots: initial placement, decayed counts, eviction rules, swaps.

Host-side and pure (numpy), so every rule is unit-tested without a GPU. Scores per rule:
``lfu_decay`` ranks experts by routing counts decayed at every rebalance, ``lru`` by the
last token that selected them, ``static`` never moves anything after the initial placement.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

REBALANCE_BYTES = 512 * 2**20  # copies one rebalance may schedule (about 10 ms of PCIe)
ADMITS_PER_STEP = 2  # copy mode: misses of one step admitted at most (each costs a full expert copy)


def initial_placement(slots: Sequence[int], n_expert: int, counts: np.ndarray | None) -> list[list[int]]:
    """Experts to put in each layer's slots: the most selected in ``counts`` (ties: lower id),
    or without counts the first ones (no expert is known to be hotter than another)."""
    out = []
    for layer, s in enumerate(slots):
        if counts is None or np.asarray(counts)[layer].sum() == 0:
            out.append(list(range(s)))
        else:
            order = np.lexsort((np.arange(n_expert), -np.asarray(counts[layer], dtype=np.float64)))
            out.append([int(e) for e in order[:s]])
    return out


class RoutingStats:
    """What the host knows of the routing: decayed counts, total counts, last use per expert."""

    def __init__(self, n_layers: int, n_expert: int, seed: np.ndarray | None = None):
        self.decayed = np.zeros((n_layers, n_expert)) if seed is None else np.array(seed, dtype=np.float64)
        self.total = self.decayed.copy()  # what persists for the next start
        self.last_use = np.full((n_layers, n_expert), -1, dtype=np.int64)
        self.tokens = 0
        self._layers = np.arange(n_layers)[:, None]

    def observe(self, selected: np.ndarray) -> None:
        """One token's selections: (layers, k) expert ids."""
        np.add.at(self.decayed, (self._layers, selected), 1.0)
        np.add.at(self.total, (self._layers, selected), 1.0)
        self.last_use[self._layers, selected] = self.tokens
        self.tokens += 1

    def decay(self, factor: float) -> None:
        self.decayed *= factor

    def scores(self, rule: str) -> np.ndarray:
        """(layers, experts): higher means hotter under ``rule``."""
        return self.last_use.astype(np.float64) if rule == "lru" else self.decayed


def plan_swaps(resident: Sequence[set[int]], scores: np.ndarray, max_swaps: int) -> list[tuple[int, int, int]]:
    """Swaps (layer, victim, admitted) that move each layer towards its hottest experts.

    Each layer keeps as many experts as it holds; a swap is worth score[admitted] -
    score[victim] and only strictly positive gains are kept (no churn between equals);
    the best ``max_swaps`` over all layers are returned, best first.
    """
    swaps = []
    for layer, held in enumerate(resident):
        row = scores[layer]
        outside = sorted((e for e in range(len(row)) if e not in held), key=lambda e: (-row[e], e))
        inside = sorted(held, key=lambda e: (row[e], e))
        for admit, victim in zip(outside, inside):
            gain = row[admit] - row[victim]
            if gain <= 0:
                break
            swaps.append((gain, layer, victim, admit))
    swaps.sort(key=lambda s: (-s[0], s[1]))
    return [(layer, victim, admit) for _, layer, victim, admit in swaps[:max(max_swaps, 0)]]


def pick_victim(candidates: Sequence[int], row: np.ndarray) -> int:
    """The coldest candidate under a rule's scores (ties: lower id)."""
    return min(candidates, key=lambda e: (row[e], e))


def plan_admissions(held: Sequence[Collection[int]], incoming: Collection[tuple[int, int]], selected: np.ndarray,
                    scores: np.ndarray, rule: str, limit: int = ADMITS_PER_STEP) -> list[tuple[int, int, int]]:
    """Copy mode: swaps (layer, victim, admitted) that bring in up to ``limit`` of one token's
    misses ``selected`` (layers, k), layer by layer; a victim is the coldest held expert the
    token did not select. LRU admits every miss (it is the most recent use), ``lfu_decay``
    only one hotter than its victim. ``incoming``: (layer, expert) already being copied in."""
    swaps = []
    for layer, row in enumerate(selected):
        chosen = set(int(e) for e in row)
        for e in row.tolist():
            if len(swaps) >= limit:
                break
            if e in held[layer] or (layer, e) in incoming:
                continue
            candidates = [v for v in held[layer] if v not in chosen]
            if not candidates:
                continue
            victim = pick_victim(candidates, scores[layer])
            if rule == "lru" or scores[layer][e] > scores[layer][victim]:
                chosen.add(victim)
                swaps.append((layer, victim, e))
    return swaps

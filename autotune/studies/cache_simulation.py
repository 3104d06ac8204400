"""Expert-cache policies replayed on a recorded routing trace: the hit rate, without a model.

``simulate`` runs a trace's decode steps (``cache_runtime.trace_file``) through the runtime's
own policy code (``cache_runtime.placement``), step for step as ``expert_cache`` runs it:

- the initial placement from the learned counts that seed it (or experts 0.. without);
- each decode step's selections count as hits against what the layer holds before the step;
- then the step is observed (decayed and total counts, last use); under ``static`` nothing
  moves; in ``copy`` miss mode up to ``ADMITS_PER_STEP`` misses are admitted; every
  ``rebalance_interval`` steps a rebalance swaps towards the hottest experts (at most
  ``REBALANCE_BYTES`` of experts) and ``lfu_decay``'s counts decay by ``decay``.

Prompt tokens neither count nor teach the cache (the runtime counts decode steps only).
This is the runtime on the CPU, where a step's selections and copies land before the next
step; on a GPU they land a few steps late, so its hit rate may trail the simulation's a
little. Not modelled: lent prefill room (``lend_prefill_room``) and prefetch (whose
served experts count in the runtime's ``effective_hit_rate``, not ``hit_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.cache_runtime.budget import model_sizes, plan_vram
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.placement import (REBALANCE_BYTES, RoutingStats, initial_placement, plan_admissions,
                                              plan_swaps)
from autotune.cache_runtime.trace_file import Trace
from autotune.errors import AutotuneError


@dataclass(frozen=True)
class SimulatedCache:
    """A cache policy as the runtime would run it on one model."""

    slots: tuple[int, ...]  # per layer
    eviction: str  # lfu_decay | lru | static
    miss_mode: str  # "copy" admits misses; other modes leave them to the rebalance
    rebalance_interval: int  # decode steps; 0: never
    decay: float
    max_swaps: int  # per rebalance
    seed: np.ndarray | None = None  # learned counts (layers, experts) that seed placement and counts

    @classmethod
    def of_runtime(cls, model: str | Path, cfg: CacheConfig, *, kv_element_bytes: int,
                   seed: np.ndarray | None = None) -> SimulatedCache:
        """The policy ``Engine(model, cache_config=cfg)`` runs: its slots per layer as the runtime
        plans them (``kv_element_bytes``: 4 on the CPU's torch kernels, 2 on Triton's), and
        ``seed``, the learned counts it starts from (``learned.seed_counts``; unused when
        ``cfg.learned_placement`` is off)."""
        if cfg.lend_prefill_room:
            raise AutotuneError("the cache simulation does not model lend_prefill_room")
        sizes = model_sizes(model)
        counts = seed if cfg.learned_placement else None
        plan = plan_vram(sizes, cfg, counts, kv_element_bytes=kv_element_bytes)
        return cls(tuple(plan.slots), cfg.eviction, cfg.miss_mode, cfg.rebalance_interval, cfg.decay,
                   REBALANCE_BYTES // sizes.expert_bytes, counts)


@dataclass(frozen=True)
class SimulationResult:
    tokens: int  # decode steps replayed
    hit_rate: float  # slot hits over all selections of every layer
    hit_rate_per_layer: list[float]
    rebalances: int
    admissions: int


def simulate(trace: Trace, cache: SimulatedCache) -> SimulationResult:
    """The hit rate of ``cache`` on the decode steps of ``trace`` (the module docstring)."""
    if len(cache.slots) != trace.n_layers:
        raise AutotuneError(f"the cache has slots for {len(cache.slots)} layers; the trace has {trace.n_layers}")
    rule, n_layers, n_expert = cache.eviction, trace.n_layers, trace.n_expert
    routing = RoutingStats(n_layers, n_expert, cache.seed)
    held = [set(experts) for experts in initial_placement(cache.slots, n_expert, cache.seed)]
    resident = np.zeros((n_layers, n_expert), dtype=bool)
    for layer, experts in enumerate(held):
        resident[layer, list(experts)] = True
    layers = np.arange(n_layers)[:, None]

    def apply(swaps: list[tuple[int, int, int]]) -> None:
        for layer, victim, admit in swaps:
            held[layer].remove(victim)
            held[layer].add(admit)
            resident[layer, victim], resident[layer, admit] = False, True

    steps = trace.decode_ids().astype(np.int64)
    hits = np.zeros(n_layers, dtype=np.int64)
    since_rebalance = rebalances = admissions = 0
    for selected in steps:
        hits += resident[layers, selected].sum(1)
        routing.observe(selected)
        if rule == "static":
            continue
        if cache.miss_mode == "copy":
            swaps = plan_admissions(held, (), selected, routing.scores(rule), rule)
            apply(swaps)
            admissions += len(swaps)
        since_rebalance += 1
        if cache.rebalance_interval and since_rebalance >= cache.rebalance_interval:
            since_rebalance = 0
            apply(plan_swaps(held, routing.scores(rule), cache.max_swaps))
            routing.decay(cache.decay)
            rebalances += 1
    selections = max(len(steps) * trace.k, 1)
    return SimulationResult(len(steps), float(hits.sum() / (selections * n_layers)),
                            [round(float(h) / selections, 4) for h in hits], rebalances, admissions)

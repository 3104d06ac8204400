"""The expert cache: every expert in (pinned) host memory, the hottest in VRAM slots.

Where experts are and how they move is ``expert_slots``; this decides what moves. The host
learns each step's selections (``selection_feed``), keeps decayed counts and last uses
(``placement.RoutingStats``), rebalances every ``rebalance_interval`` tokens within a byte
budget, and in ``copy`` miss mode also admits a few of each step's misses. Hit statistics are
counted on the device, inside the graph, against the residency each step actually saw.

Prefill batches of at least ``prefill_bypass`` tokens skip the cache: each layer's
non-resident experts are copied once into a staging area and read from there; resident
experts are read in place.

With ``lend_prefill_room``, each layer also has lent slots (``lent_slots.LentArena``) between
prefills: before a prefill their experts go home and their memory is freed for the prefill's
activations and staging area; after it they are filled again with the hottest experts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

import numpy as np
import torch

from autotune.cache_runtime.budget import VramPlan
from autotune.cache_runtime.cache_config import CPU_MISS_MODES, CacheConfig
from autotune.cache_runtime.cache_stats import cache_stats
from autotune.cache_runtime.cpu_misses import CpuMisses
from autotune.cache_runtime.graph import HostActions
from autotune.cache_runtime.devices import Device
from autotune.cache_runtime.expert_slots import ExpertSlots
from autotune.cache_runtime.ops import ExpertHooks, Ops
from autotune.cache_runtime import placement
from autotune.cache_runtime.placement import RoutingStats, initial_placement, plan_admissions, plan_swaps
ID_RING = 64  # steps whose selections may be in flight to the host


class ExpertCache(ExpertSlots, ExpertHooks):
    def __init__(self, ops: Ops, cfg: CacheConfig, plan: VramPlan, device: Device,
                 counts: np.ndarray | None = None):
        """``counts``: learned routing counts (layers, experts) that seed the placement."""
        super().__init__(ops, cfg, plan, device)
        dev = device.torch_device
        self.top_k = ops.cfg.n_expert_used
        self.routing = RoutingStats(self.n_layers, self.n_expert, counts)
        self.seeded = counts is not None
        self.staging: tuple[torch.Tensor, ...] | None = None  # with lent slots: only during a prefill
        # device-side statistics, updated inside the decode graph
        self.hits = torch.zeros(self.n_layers, dtype=torch.int64, device=dev)
        self.decode_tokens = torch.zeros(1, dtype=torch.int64, device=dev)
        self.selections = device.selections(self.n_layers, self.top_k, ID_RING)
        self._since_rebalance = 0
        self.prefetcher = None  # set by the engine when cfg.prefetch_depth > 0
        self._staged: tuple[int, list[int]] | None = None
        # miss modes cpu and auto: the CPU computes the misses of a decode step
        self.cpu_misses = CpuMisses(
            ops.w.moe_layers, self.table, self.in_slot, torch.from_numpy(self.home_addr[:, :, 0]).to(dev), device,
            cfg.cpu_threads, cfg.cpu_repack, prefetched=cfg.miss_mode == "auto", pcie_share=cfg.pcie_share,
            act=ops.cfg.expert_act) \
            if cfg.miss_mode in CPU_MISS_MODES else None
        self._fill(initial_placement(plan.slots, self.n_expert, counts if cfg.learned_placement else None))
        if self.lent is None:
            self._take_staging()
        else:
            self._lend()

    def release(self) -> None:
        """Point every entry home (before the cache's memory is dropped); stop the prefetcher."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self.cpu_misses is not None:
            self.cpu_misses.close()
        self.table.table.copy_(torch.from_numpy(self.home_addr).to(self.device.torch_device))
        self.in_slot.zero_()
        if self.lent is not None:
            self.lent.free()

    def drain(self) -> None:
        """Wait for every copy and selection in flight and apply them (tests, reconfiguring)."""
        start = time.perf_counter()
        self.device.synchronize()
        self.counters.host_wait_s += time.perf_counter() - start
        self.poll()

    def stats(self) -> dict:
        return cache_stats(self)

    # -- decode ----------------------------------------------------------------------------

    @property
    def host_in_step(self) -> bool:
        """Whether the host takes part in each layer of a decode step (the CPU computes misses),
        so a captured step waits on it (``graph.HostServedDecodeGraph``)."""
        return self.cpu_misses is not None

    def attach_host_actions(self, actions: HostActions | None) -> None:
        """Where the decode step being captured defers the CPU's part of each layer (None: capture done)."""
        self.cpu_misses.host_actions = actions

    def _held_whole(self, layer: int) -> bool:
        """Every expert of the layer is in a slot, planned or lent (whole layers, ``slot_layout``):
        the device computes all its selections, and the host need not take part in it. A step
        captured so stays right when a lent slot is taken back: the device then reads that
        expert from its home."""
        return len(self.held[layer]) == self.n_expert

    def offload(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """A decode step's misses go to the CPU (``cpu_misses``); prefill keeps its own path."""
        if self.cpu_misses is None or x.shape[0] != 1 or self._held_whole(layer):
            return None
        return self.cpu_misses.offload(layer, x, ids, weights)

    def add_offloaded(self, layer: int, h: torch.Tensor) -> None:
        """After the device's share of a decode step's layer: the prefetch staged there (while
        the host computes the misses), then the CPU's share added to ``h``."""
        if self.cpu_misses is not None and h.shape[0] == 1:
            if self.prefetcher is not None:
                self.prefetcher.run_deferred()
            if not self._held_whole(layer):  # slots move only between steps: as ``offload`` found it
                self.cpu_misses.add(layer, h)

    def router_input(self, layer: int) -> torch.Tensor | None:
        """Where a decode step's router may save its input for prefetch (None: not needed)."""
        return self.prefetcher.input_buffer(layer) if self.prefetcher is not None else None

    def after_router(self, layer: int, h: torch.Tensor, kept: bool = False) -> None:
        """``kept``: the router already saved ``h`` where ``router_input`` said."""
        if self.prefetcher is not None and h.shape[0] == 1:
            self.prefetcher.after_router(layer, h, kept)

    def begin_step(self) -> None:
        """Start of a decode step (captured with it)."""
        if self.prefetcher is not None:
            self.prefetcher.begin_step()

    def join(self) -> None:
        """Make the compute stream wait for the prefetch stream's work so far."""
        if self.prefetcher is not None:
            self.prefetcher.join()

    def finish_step(self, ids: torch.Tensor) -> None:
        """End of a decode step (captured with it): join the prefetch stream, count hits on the
        device against the residency this step saw. ids (1, layers, k)."""
        self.join()
        self.ops.count_step(ids[0], self.in_slot, self.hits, self.decode_tokens,
                            None if self.prefetcher is None else self.prefetcher.step_counts())

    @contextlib.contextmanager
    def capturing(self):
        """A context for capturing the decode step: no other thread queues GPU work inside, and
        the CPU's counters forget the capture's eager warm-up steps (as the device's do)."""
        saved = dataclasses.replace(self.cpu_misses.counters) if self.cpu_misses is not None else None
        with self.prefetcher.paused() if self.prefetcher is not None else contextlib.nullcontext():
            yield
        if saved is not None:
            self.cpu_misses.counters = saved

    def device_counters(self) -> list[torch.Tensor]:
        """The statistics a captured step updates (the engine restores them after capture's warm-up)."""
        extra = self.prefetcher.device_counters() if self.prefetcher is not None else []
        return [self.hits, self.decode_tokens, *extra]

    def after_step(self, ids: torch.Tensor) -> None:
        """Host side, after a step was queued: send its selections to the host, then poll."""
        if self.prefetcher is not None:
            self.prefetcher.raise_if_failed()
        if self.selections.full():  # the GPU is ID_RING steps behind: let it catch up
            start = time.perf_counter()
            self.selections.wait_oldest()
            self.counters.host_wait_s += time.perf_counter() - start
            self.poll()
        self.selections.push(ids[0])
        self.poll()

    def poll(self) -> None:
        """Apply whatever finished: selections that reached the host, copies that landed."""
        for selected in self.selections.landed():
            self._observe(selected)
        self._poll_swaps()

    def _observe(self, selected: np.ndarray) -> None:
        self.routing.observe(selected)
        self.counters.tokens += 1
        if self.cfg.eviction == "static":
            return
        if self.cfg.miss_mode == "copy":
            self._admit(selected)
        self._since_rebalance += 1
        if self.cfg.rebalance_interval and self._since_rebalance >= self.cfg.rebalance_interval:
            self._since_rebalance = 0
            self.rebalance()

    def _admit(self, selected: np.ndarray) -> None:
        """Copy mode: bring in up to ADMITS_PER_STEP of this step's misses (``plan_admissions``)."""
        swaps = plan_admissions(self.held, self.incoming, selected, self.routing.scores(self.cfg.eviction),
                                self.cfg.eviction)
        nbytes = self._schedule(swaps)
        self.counters.admissions += len(swaps)
        self.counters.admission_bytes += nbytes

    def rebalance(self) -> None:
        """Move towards the hottest experts under the rule, within ``placement.REBALANCE_BYTES``
        (read here, so a study may change it)."""
        resident = [set(h) for h in self.held]
        for layer, e in self.incoming:
            resident[layer].add(e)
        scores = self.routing.scores(self.cfg.eviction)
        swaps = [s for s in plan_swaps(resident, scores, placement.REBALANCE_BYTES // self.expert_bytes)
                 if s[1] in self.held[s[0]]]  # a victim still being copied in stays
        nbytes = self._schedule(swaps)
        self.routing.decay(self.cfg.decay)
        self.counters.rebalances += 1
        self.counters.rebalance_bytes += nbytes

    # -- lent slots ---------------------------------------------------------------------------

    def before_prefill(self) -> None:
        """A prefill of several tokens begins: its room, lent to slots, is taken back."""
        if self.lent is None:
            return
        self._land_swaps()
        entries = []
        for layer, held in enumerate(self.held):
            planned = self.plan.slots[layer]
            for e in [e for e, slot in held.items() if slot >= planned]:
                del held[e]
                entries.append((layer, e, self.home_addr[layer][e], False))
        self._write(entries)
        self.device.synchronize()  # no step in flight reads a lent slot any more
        self.storage.forget(self._lent_stacks())
        self.lent.free()
        self._take_staging()

    def after_prefill(self) -> None:
        """The prefill is over: its room is lent to slots again."""
        if self.lent is None:
            return
        self.storage.forget([self.staging])
        self.staging = None
        self._lend()

    def _lend(self) -> None:
        """Allocate the lent slots and fill them with each layer's hottest non-resident experts
        (copies and table writes in stream order: the next step reads them)."""
        if not self.lent.allocate():
            return
        self.storage.register(self._lent_stacks())
        scores = self.routing.scores(self.cfg.eviction)
        entries = []
        for layer, n in enumerate(self.plan.lent_slots):
            planned, row = self.plan.slots[layer], scores[layer]
            outside = sorted((e for e in range(self.n_expert)
                              if e not in self.held[layer] and (layer, e) not in self.incoming), key=lambda e: (-row[e], e))
            for j, e in enumerate(outside[:n]):
                self._copy_in(layer, planned + j, e)
                self.held[layer][e] = planned + j
                entries.append((layer, e, self._slot_addr(layer, planned + j), True))
        self._write(entries)

    def _lent_stacks(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Each lent slot as a stack of one expert (gate, up, down), as the storage map takes
        them: cut only where a map iterates them (a GPU's prefill need not cut hundreds of views)."""
        return (tuple(m[None] for m in views) for layer in self.lent.views for views in layer)

    # -- prefill bypass ----------------------------------------------------------------------

    def _take_staging(self) -> None:
        """The staging area: the non-resident experts of the layer with the fewest planned slots."""
        n_bypass = self.n_expert - min(self.plan.slots) if self.plan.staging else 0
        with torch.inference_mode(False):  # taken inside a prefill: storage, not an inference tensor
            self.staging = tuple(torch.empty((n_bypass, *m.shape[1:]), dtype=torch.uint8,
                                             device=self.device.torch_device) for m in self.home[0])
        self.storage.register([self.staging])

    def bypasses(self, n_tokens: int) -> bool:
        """Whether a batch of ``n_tokens`` (more than one) skips the cache."""
        return (n_tokens > 1 and bool(self.cfg.prefill_bypass) and n_tokens >= self.cfg.prefill_bypass
                and self.staging is not None and len(self.staging[0]) > 0)

    def stage_layer(self, layer: int) -> None:
        """Copy the layer's non-resident experts into the staging area and point at them there.

        In stream order on the compute stream, so the previous layer's reads are done first.
        Runs of consecutive experts go as one copy.
        """
        if layer == 0:
            self.counters.bypass_batches += 1
            self._land_swaps()  # the staging area holds the non-resident experts of a full layer
        missing = [e for e in range(self.n_expert) if e not in self.held[layer]]
        if not missing:
            return
        idx = 0
        while idx < len(missing):
            end = idx
            while end + 1 < len(missing) and missing[end + 1] == missing[end] + 1:
                end += 1
            for dst, src in zip(self.staging, self.home[layer]):
                dst[idx:end + 1].copy_(src[missing[idx]:missing[end] + 1], non_blocking=True)
            idx = end + 1
        staged = np.array([[m[i].data_ptr() for m in self.staging] for i in range(len(missing))], dtype=np.int64)
        self._write([(layer, e, staged[i], False) for i, e in enumerate(missing)])
        self._staged = (layer, missing)
        self.counters.bypass_bytes += len(missing) * self.expert_bytes

    def unstage_layer(self, layer: int) -> None:
        staged = self._staged
        if staged and staged[0] == layer:
            self._write([(layer, e, self.home_addr[layer][e], False) for e in staged[1]])
            self._staged = None

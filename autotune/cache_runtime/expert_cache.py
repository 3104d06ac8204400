"""The expert cache: every expert in (pinned) host memory, the hottest in VRAM slots.

The kernels reach experts through ``ExpertTable``; a non-resident expert's entry points at
its host copy ("home"), which the kernels read over PCIe (zero-copy), so a miss never
stalls decode. Residency changes only by table writes between decode steps, so the
captured decode graph stays valid:

- evict: the victim's entry goes home on the compute stream (after every step already
  queued), an event is recorded there, and only then does the copy stream overwrite the
  victim's slot with the admitted expert (so no in-flight step reads a slot being written);
- admit: once that copy's event has completed (polled, never waited on), the admitted
  expert's entry is repointed at the slot.

The host learns each step's selections through an asynchronous copy into pinned memory
(polled the same way), keeps decayed counts and last uses (``placement.RoutingStats``),
rebalances every ``rebalance_interval`` tokens within a byte budget, and in ``copy`` miss
mode also admits a few of each step's misses. Hit statistics are counted on the device,
inside the graph, against the residency each step actually saw.

Prefill batches of at least ``prefill_bypass`` tokens skip the cache: each layer's
non-resident experts are copied once into a staging area and read from there; resident
experts are read in place.

With ``lend_prefill_room``, each layer also has lent slots (``lent_slots.LentArena``) between
prefills: before a prefill their experts go home and their memory is freed for the prefill's
activations and staging area; after it they are filled again with the hottest experts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from autotune.cache_runtime.budget import VramPlan
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.expert_table import ExpertTable
from autotune.cache_runtime.lent_slots import LentArena
from autotune.cache_runtime.placement import RoutingStats, initial_placement, pick_victim, plan_swaps
from autotune.cache_runtime.step_counts import count_step
from autotune.cache_runtime.weights import LayerWeights, QTensor

REBALANCE_BYTES = 512 * 2**20  # copies one rebalance may schedule (about 10 ms of PCIe)
ADMITS_PER_STEP = 2  # copy mode: misses of one step admitted at most (each costs a full expert copy)
ID_RING = 64  # steps whose selections may be in flight to the host


@dataclass
class _Counters:
    """Host-side totals (the device-side hit counters live on the cache)."""

    tokens: int = 0
    rebalances: int = 0
    rebalance_bytes: int = 0
    admissions: int = 0
    admission_bytes: int = 0
    bypass_batches: int = 0
    bypass_bytes: int = 0
    host_wait_s: float = 0.0  # the host waiting for the device (a full id ring, drain)
    swaps_in_flight: list = field(default_factory=list)


class ExpertCache:
    def __init__(self, layers: list[LayerWeights], table: ExpertTable, cfg: CacheConfig, plan: VramPlan,
                 device: torch.device, top_k: int, counts: np.ndarray | None = None, triton: bool = False):
        """``triton``: the decode step runs on the Triton kernels (its counters too)."""
        self.cfg, self.plan, self.device, self.top_k = cfg, plan, device, top_k
        self.triton = triton
        self.n_layers, self.n_expert = len(layers), layers[0].gate_exps.data.shape[0]
        self.home = [(lw.gate_exps.data, lw.up_exps.data, lw.down_exps.data) for lw in layers]
        self.table = table
        self.home_addr = np.array([[[m[e].data_ptr() for m in mats] for e in range(self.n_expert)]
                                   for mats in self.home], dtype=np.int64)
        self.expert_bytes = sum(m[0].numel() for m in self.home[0])
        cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.slots = [tuple(torch.empty((s, *m.shape[1:]), dtype=torch.uint8, device=device) for m in mats)
                      for s, mats in zip(plan.slots, self.home)]
        # slots plan.slots[layer] onwards of a layer are its lent ones, while they exist
        self.lent = LentArena(plan.lent_slots, [m.shape[1:] for m in self.home[0]], device) \
            if any(plan.lent_slots) else None
        self.held = [dict() for _ in layers]  # layer -> {expert: slot}
        self.incoming: set[tuple[int, int]] = set()  # (layer, expert) being copied in
        self.routing = RoutingStats(self.n_layers, self.n_expert, counts)
        self.seeded = counts is not None
        self.counters = _Counters()
        self.staging: tuple[torch.Tensor, ...] | None = None  # with lent slots: only during a prefill
        # device-side statistics, updated inside the decode graph
        self.in_slot = torch.zeros(self.n_layers, self.n_expert, dtype=torch.bool, device=device)
        self.hits = torch.zeros(self.n_layers, dtype=torch.int64, device=device)
        self.decode_tokens = torch.zeros(1, dtype=torch.int64, device=device)
        self._ids_host = torch.empty((ID_RING, self.n_layers, top_k), dtype=torch.int64, pin_memory=cuda)
        self._ids_events: list[tuple[torch.cuda.Event, int]] = []  # (copied, ring slot), GPU only
        self._ring_next = 0
        self._since_rebalance = 0
        self.prefetcher = None  # set by the engine when cfg.prefetch_depth > 0
        self._where: dict[int, tuple[tuple[torch.Tensor, ...], int]] = {}
        for mats in (*self.home, *self.slots):
            self.register(mats)
        self._staged: tuple[int, list[int]] | None = None
        self._fill(initial_placement(plan.slots, self.n_expert, counts if cfg.learned_placement else None))
        if self.lent is None:
            self._take_staging()
        else:
            self._lend()

    # -- table writes --------------------------------------------------------------------

    def _write(self, entries: list[tuple[int, int, np.ndarray, bool]]) -> None:
        """Repoint (layer, expert) entries at addresses (gate, up, down), in stream order."""
        if not entries:
            return
        idx = torch.tensor([layer * self.n_expert + e for layer, e, _, _ in entries], dtype=torch.long)
        addr = torch.from_numpy(np.stack([a for _, _, a, _ in entries]).astype(np.int64))
        flags = torch.tensor([f for *_, f in entries], dtype=torch.bool)
        if self.device.type == "cuda":
            idx, addr, flags = (t.pin_memory().to(self.device, non_blocking=True) for t in (idx, addr, flags))
        self.table.table.view(-1, 3).index_copy_(0, idx, addr)
        self.in_slot.view(-1).index_copy_(0, idx, flags)

    def _slot(self, layer: int, slot: int) -> tuple[torch.Tensor, ...]:
        """The slot's gate, up and down storage (a planned slot, or a lent one)."""
        planned = self.plan.slots[layer]
        return tuple(m[slot] for m in self.slots[layer]) if slot < planned else self.lent.views[layer][slot - planned]

    def _slot_addr(self, layer: int, slot: int) -> np.ndarray:
        return np.array([m.data_ptr() for m in self._slot(layer, slot)], dtype=np.int64)

    def _copy_in(self, layer: int, slot: int, expert: int) -> None:
        for dst, src in zip(self._slot(layer, slot), self.home[layer]):
            dst.copy_(src[expert], non_blocking=True)

    def _fill(self, placement: list[list[int]]) -> None:
        """The initial placement, copied synchronously (at start, nothing is running)."""
        entries = []
        for layer, experts in enumerate(placement):
            for slot, e in enumerate(experts):
                self._copy_in(layer, slot, e)
                self.held[layer][e] = slot
                entries.append((layer, e, self._slot_addr(layer, slot), True))
        self._write(entries)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Point every entry home (before the cache's memory is dropped); stop the prefetcher."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.table.table.copy_(torch.from_numpy(self.home_addr).to(self.device))
        self.in_slot.zero_()
        if self.lent is not None:
            self.lent.free()

    # -- swaps -----------------------------------------------------------------------------

    def _schedule(self, swaps: list[tuple[int, int, int]]) -> int:
        """Evict and admit (layer, victim, admitted); returns the bytes scheduled."""
        if not swaps:
            return 0
        moves = []
        for layer, victim, admit in swaps:
            slot = self.held[layer].pop(victim)
            self.incoming.add((layer, admit))
            moves.append((layer, slot, admit))
        self._write([(layer, v, self.home_addr[layer][v], False) for layer, v, _ in swaps])
        if self.copy_stream is None:
            for move in moves:
                self._copy_in(*move)
            self._commit(moves)
        else:
            freed = torch.cuda.Event()
            freed.record()
            self.copy_stream.wait_event(freed)
            with torch.cuda.stream(self.copy_stream):
                for move in moves:
                    self._copy_in(*move)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
            self.counters.swaps_in_flight.append((done, moves))
        return len(moves) * self.expert_bytes

    def _commit(self, moves: list[tuple[int, int, int]]) -> None:
        for layer, slot, admit in moves:
            self.incoming.discard((layer, admit))
            self.held[layer][admit] = slot
        self._write([(layer, admit, self._slot_addr(layer, slot), True) for layer, slot, admit in moves])

    def _poll_swaps(self) -> None:
        pending = []
        for done, moves in self.counters.swaps_in_flight:
            if done.query():
                self._commit(moves)
            else:
                pending.append((done, moves))
        self.counters.swaps_in_flight = pending

    def _land_swaps(self) -> None:
        """Wait for every swap copy in flight and commit it, so each layer holds all its slots."""
        start = time.perf_counter()
        for done, _ in self.counters.swaps_in_flight:
            done.synchronize()
        self.counters.host_wait_s += time.perf_counter() - start
        self._poll_swaps()

    def drain(self) -> None:
        """Wait for every copy and selection in flight and apply them (tests, reconfiguring)."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.counters.host_wait_s += time.perf_counter() - start
        self.poll()

    # -- decode ----------------------------------------------------------------------------

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
        count_step(ids[0], self.in_slot, self.hits, self.decode_tokens,
                   None if self.prefetcher is None else self.prefetcher.step_counts(), self.triton)

    def capturing(self):
        """A context for capturing the decode step: no other thread queues GPU work inside."""
        return self.prefetcher.paused() if self.prefetcher is not None else contextlib.nullcontext()

    def device_counters(self) -> list[torch.Tensor]:
        """The statistics a captured step updates (the engine restores them after capture's warm-up)."""
        extra = self.prefetcher.device_counters() if self.prefetcher is not None else []
        return [self.hits, self.decode_tokens, *extra]

    def after_step(self, ids: torch.Tensor) -> None:
        """Host side, after a step was queued: fetch its selections asynchronously, then poll."""
        if self.prefetcher is not None:
            self.prefetcher.raise_if_failed()
        if self.device.type != "cuda":
            self._observe(ids[0].numpy().astype(np.int64))
            self.poll()
            return
        if len(self._ids_events) >= ID_RING:  # the GPU is ID_RING steps behind: let it catch up
            start = time.perf_counter()
            self._ids_events[0][0].synchronize()
            self.counters.host_wait_s += time.perf_counter() - start
            self.poll()
        slot = self._ring_next
        self._ring_next = (slot + 1) % ID_RING
        self._ids_host[slot].copy_(ids[0].to(torch.int64), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._ids_events.append((event, slot))
        self.poll()

    def poll(self) -> None:
        """Apply whatever finished: selections that reached the host, copies that landed."""
        while self._ids_events and self._ids_events[0][0].query():
            _, slot = self._ids_events.pop(0)
            self._observe(self._ids_host[slot].numpy().copy())
        if self.copy_stream is not None:
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
        """Copy mode: bring in up to ADMITS_PER_STEP of this step's misses, evicting by the rule
        (lfu_decay: only where the missed expert's decayed count beats the victim's)."""
        scores = self.routing.scores(self.cfg.eviction)
        swaps = []
        for layer, row in enumerate(selected):
            chosen = set(int(e) for e in row)
            for e in row.tolist():
                if len(swaps) >= ADMITS_PER_STEP:
                    break
                if e in self.held[layer] or (layer, e) in self.incoming:
                    continue
                candidates = [v for v in self.held[layer] if v not in chosen]
                if not candidates:
                    continue
                victim = pick_victim(candidates, scores[layer])
                # LRU admits every miss (it is the most recent use); LFU only a hotter expert
                if self.cfg.eviction == "lru" or scores[layer][e] > scores[layer][victim]:
                    chosen.add(victim)
                    swaps.append((layer, victim, e))
        nbytes = self._schedule(swaps)
        self.counters.admissions += len(swaps)
        self.counters.admission_bytes += nbytes

    def rebalance(self) -> None:
        """Move towards the hottest experts under the rule, within REBALANCE_BYTES."""
        resident = [set(h) for h in self.held]
        for layer, e in self.incoming:
            resident[layer].add(e)
        scores = self.routing.scores(self.cfg.eviction)
        swaps = [s for s in plan_swaps(resident, scores, REBALANCE_BYTES // self.expert_bytes)
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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # no step in flight reads a lent slot any more
        for mats in self._lent_stacks():
            self._forget(mats)
        self.lent.free()
        self._take_staging()

    def after_prefill(self) -> None:
        """The prefill is over: its room is lent to slots again."""
        if self.lent is None:
            return
        self._forget(self.staging)
        self.staging = None
        self._lend()

    def _lend(self) -> None:
        """Allocate the lent slots and fill them with each layer's hottest non-resident experts
        (copies and table writes in stream order: the next step reads them)."""
        if not self.lent.allocate():
            return
        for mats in self._lent_stacks():
            self.register(mats)
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

    def _lent_stacks(self) -> list[tuple[torch.Tensor, ...]]:
        """Each lent slot as a stack of one expert (gate, up, down), as ``register`` takes them;
        none on a GPU, where nothing is registered (a prefill need not cut hundreds of views)."""
        if self.device.type != "cpu":
            return []
        return [tuple(m[None] for m in views) for layer in self.lent.views for views in layer]

    # -- prefill bypass ----------------------------------------------------------------------

    def _take_staging(self) -> None:
        """The staging area: the non-resident experts of the layer with the fewest planned slots."""
        n_bypass = self.n_expert - min(self.plan.slots) if self.plan.staging else 0
        with torch.inference_mode(False):  # taken inside a prefill: storage, not an inference tensor
            self.staging = tuple(torch.empty((n_bypass, *m.shape[1:]), dtype=torch.uint8, device=self.device)
                                 for m in self.home[0])
        self.register(self.staging)

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

    # -- where an expert is, for the torch path --------------------------------------------

    def register(self, mats: tuple[torch.Tensor, ...]) -> None:
        """Make ``resolve`` find experts stored in ``mats`` (gate, up, down stacks). Only on the
        CPU, where the torch path reads experts through it; a GPU's kernels read the table."""
        if self.device.type != "cpu":
            return
        for i in range(len(mats[0])):
            self._where[mats[0][i].data_ptr()] = (mats, i)

    def _forget(self, mats: tuple[torch.Tensor, ...]) -> None:
        """Undo ``register`` for storage about to be freed."""
        if self.device.type != "cpu":
            return
        for i in range(len(mats[0])):
            self._where.pop(mats[0][i].data_ptr(), None)

    def resolve(self, layer: int, expert: int, like: tuple[QTensor, QTensor, QTensor]) -> tuple[QTensor, ...]:
        """The expert's matrices wherever its table entry points (slot, staging, ring or home):
        the torch path reads exactly what the kernels would."""
        mats, index = self._where[int(self.table.table[layer, expert, 0])]
        return tuple(QTensor(m[index], q.qtype, q.cols) for m, q in zip(mats, like))

    # -- statistics --------------------------------------------------------------------------

    def stats(self) -> dict:
        self.drain()
        c = self.counters
        tokens = int(self.decode_tokens.item())
        selections = tokens * self.top_k
        hits_layer = self.hits.cpu().numpy()
        misses = selections * self.n_layers - int(hits_layer.sum())
        out = {
            "tokens": tokens,
            "hit_rate": float(hits_layer.sum() / max(selections * self.n_layers, 1)),
            "hit_rate_per_layer": [round(float(h) / max(selections, 1), 4) for h in hits_layer],
            "slots_per_layer": list(self.plan.slots),
            "lent_slots_per_layer": list(self.plan.lent_slots),
            "lend_refusals": 0 if self.lent is None else self.lent.refusals,
            "seeded_from_learned_counts": self.seeded,
            "rebalances": c.rebalances,
            "rebalance_bytes": c.rebalance_bytes,
            "admissions": c.admissions,
            "admission_bytes": c.admission_bytes,
            "prefill_bypass_batches": c.bypass_batches,
            "prefill_bypass_bytes": c.bypass_bytes,
            # the compute stream never waits for rebalance or admission copies (no event is
            # waited on there); prefetch joins at each step's end, whose cost shows in tg128
            "host_wait_s": round(c.host_wait_s, 6),
        }
        prefetch = self.prefetcher.stats() if self.prefetcher is not None else {}
        from_prefetch = prefetch.get("served", 0)
        zero_copy = (misses - from_prefetch) * self.expert_bytes
        copied = c.rebalance_bytes + c.admission_bytes + prefetch.get("copied", 0) * self.expert_bytes
        out.update(
            misses=misses,
            served_by_prefetch=from_prefetch,
            effective_hit_rate=float((int(hits_layer.sum()) + from_prefetch) / max(selections * self.n_layers, 1)),
            zero_copy_bytes=zero_copy,
            copy_bytes=copied,
            pcie_bytes_per_token=(zero_copy + copied) / max(tokens, 1),
            prefetch_precision=prefetch.get("precision"),
            prefetch_recall=prefetch.get("recall"),
            prediction_overlap=prefetch.get("overlap"),
            prefetch_late=prefetch.get("late"),
            # DMA: the claims' tag reads while copies were in flight (about a microsecond each),
            # and the claims that gave up on one (its expert read home, its copy wasted)
            claim_spins=prefetch.get("claim_spins"),
            claims_given_up=prefetch.get("claims_given_up"),
        )
        return out

"""The expert cache's storage: every expert's home in host memory, VRAM slots, and the table
writes and copies that move experts between them (``expert_cache`` decides what moves).

The kernels reach experts through ``ExpertTable``; a non-resident expert's entry points at
its host copy ("home"), which the kernels read over PCIe (zero-copy), so a miss never
stalls decode. Residency changes only by table writes between decode steps, so the
captured decode graph stays valid:

- evict: the victim's entry goes home on the compute stream (after every step already
  queued), and only then does the copy lane overwrite the victim's slot with the admitted
  expert (so no in-flight step reads a slot being written);
- admit: once that copy's event has completed (polled, never waited on), the admitted
  expert's entry is repointed at the slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from autotune.cache_runtime.budget import VramPlan
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.devices import Device
from autotune.cache_runtime.expert_storage import StorageMap, Unmapped
from autotune.cache_runtime.ops import Ops


@dataclass
class Counters:
    """Host-side totals (the device-side hit counters live on the cache)."""

    tokens: int = 0
    rebalances: int = 0
    rebalance_bytes: int = 0
    admissions: int = 0
    admission_bytes: int = 0
    bypass_batches: int = 0
    bypass_bytes: int = 0
    host_wait_s: float = 0.0  # the host waiting for the device (a full id ring, drain)
    swaps_in_flight: list = field(default_factory=list)  # (copy event, moves)


class ExpertSlots:
    def __init__(self, ops: Ops, cfg: CacheConfig, plan: VramPlan, device: Device):
        """``ops``: the model's ops, whose expert table this keeps current."""
        layers = ops.w.moe_layers
        self.ops, self.cfg, self.plan, self.device = ops, cfg, plan, device
        dev = device.torch_device
        self.n_layers, self.n_expert = len(layers), layers[0].gate_exps.data.shape[0]
        self.home = [(lw.gate_exps.data, lw.up_exps.data, lw.down_exps.data) for lw in layers]
        self.table = ops.experts_table
        self.home_addr = np.array([[[m[e].data_ptr() for m in mats] for e in range(self.n_expert)]
                                   for mats in self.home], dtype=np.int64)
        self.expert_bytes = sum(m[0].numel() for m in self.home[0])
        self.copy_lane = device.lane()
        self.slots = [tuple(torch.empty((s, *m.shape[1:]), dtype=torch.uint8, device=dev) for m in mats)
                      for s, mats in zip(plan.slots, self.home)]
        # slots plan.slots[layer] onwards of a layer are its lent ones, while they exist
        self.lent = device.lent_arena(plan.lent_slots, [m.shape[1:] for m in self.home[0]]) \
            if any(plan.lent_slots) else None
        self.held = [dict() for _ in layers]  # layer -> {expert: slot}
        self.incoming: set[tuple[int, int]] = set()  # (layer, expert) being copied in
        self.counters = Counters()
        self.in_slot = torch.zeros(self.n_layers, self.n_expert, dtype=torch.bool, device=dev)
        self.storage = Unmapped() if ops.kernels_read_table else StorageMap()
        self.storage.register([*self.home, *self.slots])

    # -- table writes --------------------------------------------------------------------

    def _write(self, entries: list[tuple[int, int, np.ndarray, bool]]) -> None:
        """Repoint (layer, expert) entries at addresses (gate, up, down), in stream order."""
        if not entries:
            return
        idx = torch.tensor([layer * self.n_expert + e for layer, e, _, _ in entries], dtype=torch.long)
        addr = torch.from_numpy(np.stack([a for _, _, a, _ in entries]).astype(np.int64))
        flags = torch.tensor([f for *_, f in entries], dtype=torch.bool)
        idx, addr, flags = self.device.upload((idx, addr, flags))
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
        self.device.synchronize()

    def resolve(self, layer: int, expert: int, like: tuple) -> tuple:
        """The expert's matrices wherever its table entry points (slot, staging, ring or home):
        the torch path reads exactly what the kernels would."""
        return self.storage.resolve(int(self.table.table[layer, expert, 0]), like)

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

        def copies() -> None:
            for move in moves:
                self._copy_in(*move)

        done = self.copy_lane.copy_behind(copies)
        if done.query():  # the host copied them at once
            self._commit(moves)
        else:
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

"""Cross-layer prefetch inside the decode step: predict layer l + d's experts after layer l's
router and copy the predicted misses into a VRAM ring while layers l .. l + d - 1 compute.

Layer m's prediction applies m's own RMSNorm and router to the hidden state entering layer
m - d's experts (layer 0 predicts layers 1 .. d). On the GPU everything runs on a side
stream forked inside the captured graph and joined at the end of the step, so it costs the
compute stream nothing but a fork: a copy kernel reads each predicted non-resident expert
from pinned host memory into a ring slot, and then a commit kernel repoints its table entry.
The compute stream never waits for it: when layer m's experts run, each entry points either
home (the copy has not landed: read over PCIe as usual) or at the finished ring copy.

Ring safety (the side stream may lag the compute stream by many layers when copies are slow):
- every step starts, on the compute stream, by pointing all ring occupants home, so an entry
  points into the ring only once committed in this step;
- layer m uses ring rows (m mod (d + 1)) * k ..; before overwriting them, the side stream points
  their previous occupant home. That occupant is a layer m - d - 1 of this step, whose experts
  the compute stream has finished: the side stream's work for m waits for the fork that follows
  layer m - d's router. A lagging side stream only delays commits; while layer m's entries are
  not committed, its experts are read from home.

The steps run as Triton kernels (``triton_prefetch``) or, eagerly, as PyTorch
(``TorchRingSteps``, the CPU path); the device's lane decides where (``devices``).
Precision and recall are counted on the device against the step's actual selections.

``engine="dma"``: the side stream only predicts; the copies are made by the DMA engines,
queued by a host thread, and claimed on the compute stream (``dma_prefetch``).

``inline``: where the host takes part in every layer (the CPU computes the misses), the step
is a chain of graphs cut inside each layer, which a side stream forked in one layer and joined
at the step's end cannot span. Then a layer's targets are predicted and staged on the compute
stream itself, after the device's share of the layer's experts (``run_deferred``), while the
host computes the layer's misses: with ``dma`` only the prediction and its publication run
there, and the copies overlap the following layers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch

from autotune.cache_runtime.dma_prefetch import DmaStager, tag
from autotune.cache_runtime.expert_cache import ExpertCache
from autotune.cache_runtime.ops import Ops
from autotune.cache_runtime.routing import route_layer
from autotune.cache_runtime.step_counts import PrefetchCounts
from autotune.cache_runtime.torch_ops import rmsnorm

# the prediction stream's priority (lower runs first; torch allows -1 and 0): its small kernels
# publish the predictions the DMA copies wait for, beside the compute stream's larger ones
SIDE_STREAM_PRIORITY = 0


class RingSteps(ABC):
    """The prefetcher's device-side steps, in one kind of kernels (see the module)."""

    def __init__(self, prefetcher: Prefetcher):
        self.p = prefetcher

    @abstractmethod
    def release_all(self) -> None:
        """Point every ring occupant home (compute stream, before the step's first layer)."""

    @abstractmethod
    def predict(self, m: int, source: int) -> None:
        """Layer m's router on layer ``source``'s experts' input: its top k into ``pred[m]``."""

    @abstractmethod
    def stage(self, m: int, row: int) -> None:
        """Empty layer m's ring rows (from ``row``), copy its predicted misses in, repoint them."""

    @abstractmethod
    def claim(self, m: int, row: int) -> None:
        """DMA: point layer m's entries at its ring rows whose copies of this step have landed."""


class TorchRingSteps(RingSteps):
    """The same steps, eagerly in PyTorch (the CPU path)."""

    def release_all(self) -> None:
        self._release(range(self.p.rows * self.p.k))

    def predict(self, m: int, source: int) -> None:
        p = self.p
        lw, cfg = p.ops.w.moe_layers[m], p.ops.cfg
        x = rmsnorm(p.xs[source][None], lw.ffn_norm, cfg.rms_eps)
        _, ids = route_layer(p.ops.linear(x, lw.router), cfg, lw.exp_probs_b)
        p.pred[m].copy_(ids[0])

    def stage(self, m: int, row: int) -> None:
        p = self.p
        self._release(range(row, row + p.k))
        for j, e in enumerate(p.pred[m].tolist()):
            if self._take_row(m, row + j, j, e):
                for dst, src in zip(p.ring, p.cache.home[m]):
                    dst[row + j].copy_(src[e])

    def claim(self, m: int, row: int) -> None:
        p, n_expert = self.p, self.p.cache.n_expert
        self._release(range(row, row + p.k))
        base = tag(int(p.seq), m, 0, p.cache.n_layers, n_expert)
        for j in range(p.k):
            e = int(p.tags[row + j]) - base
            self._take_row(m, row + j, j, e if 0 <= e < n_expert else None)

    def _take_row(self, m: int, ring_row: int, j: int, e: int | None) -> bool:
        """Point layer m's expert e at ``ring_row`` if it still reads home, and record the row's
        occupant and prediction j's staged flag (e None: nothing to take)."""
        p, table = self.p, self.p.cache.table.table
        take = e is not None and int(table[m, e, 0]) == int(p.home[m, e, 0])
        if take:
            table[m, e] = p.ring_addr[ring_row]
        p.occupant[ring_row] = m * p.cache.n_expert + e if take else -1
        p.staged[m, j] = int(take)
        return take

    def _release(self, rows: range) -> None:
        p = self.p
        flat, home = p.cache.table.table.view(-1, 3), p.home.view(-1, 3)
        for i in rows:
            o = int(p.occupant[i])
            if o >= 0 and int(flat[o, 0]) == int(p.ring_addr[i, 0]):
                flat[o] = home[o]
            p.occupant[i] = -1


class Prefetcher:
    def __init__(self, ops: Ops, cache: ExpertCache, depth: int, engine: str = "sm",
                 steps: type[RingSteps] = TorchRingSteps):
        """``engine``: who copies the predicted misses, "sm" copy programs in the step or the "dma"
        engines; ``steps``: the ring's steps in the ops' kind of kernels (``platforms``).
        Where the cache's host takes part in the step, staging is ``inline`` (see the module)."""
        self.ops, self.cache, self.depth = ops, cache, depth
        self.inline = cache.host_in_step
        self._deferred: list[tuple[int, int]] = []  # (target, source) layers staged at run_deferred
        self.rows = depth + 1  # ring rows of k experts
        dev, k, n_layers = cache.device.torch_device, cache.top_k, cache.n_layers
        self.k = k
        self.ring = tuple(torch.empty((self.rows * k, *m.shape[1:]), dtype=torch.uint8, device=dev)
                          for m in cache.home[0])
        self.ring_addr = torch.tensor([[m[i].data_ptr() for m in self.ring] for i in range(self.rows * k)],
                                      dtype=torch.int64, device=dev)
        self.home = torch.from_numpy(cache.home_addr).to(dev)
        self.words = [m[0].numel() // 4 for m in cache.home[0]]
        self.occupant = torch.full((self.rows * k,), -1, dtype=torch.int64, device=dev)
        self.pred = torch.zeros(n_layers, k, dtype=torch.int32, device=dev)
        self.staged = torch.zeros(n_layers, k, dtype=torch.int32, device=dev)
        self.predicted = torch.zeros(n_layers, dtype=torch.bool, device=dev)
        self.predicted[1:] = True
        self.counters = torch.zeros(5, dtype=torch.int64, device=dev)  # overlap, n_pred, staged, served, misses
        # each layer's input to its experts, kept apart: the side stream may still be predicting
        # from layer l's while the compute stream saves layer l + 1's
        self.xs = torch.empty(n_layers, ops.cfg.n_embd, dtype=torch.float32, device=dev)
        # inline staging runs on the compute stream, so it needs no lane of its own
        self.side = None if self.inline else cache.device.lane(SIDE_STREAM_PRIORITY)
        cache.storage.register([self.ring])
        self.steps = steps(self)
        self.stager = self._dma_stager() if engine == "dma" else None

    def _dma_stager(self) -> DmaStager:
        device, n_layers = self.cache.device, self.cache.n_layers
        dev = device.torch_device
        self.seq = torch.zeros(1, dtype=torch.int64, device=dev)  # the decode step's number, from 1
        self.tags = torch.full((self.rows * self.k,), -1, dtype=torch.int64, device=dev)
        self.mailbox = device.host_buffer((n_layers, self.k + 1), torch.int64).zero_()
        self.claim_waits = torch.zeros(2, dtype=torch.int64, device=dev)  # tag reads, claims that gave up
        return device.dma_stager(self.mailbox, self.tags, self.ring, self.cache.home, self.depth)

    def close(self) -> None:
        """Stop the DMA stager's thread (if any)."""
        if self.stager is not None:
            self.stager.close()

    def raise_if_failed(self) -> None:
        """Raise what stopped the DMA stager's thread, if anything did."""
        if self.stager is not None:
            self.stager.raise_if_failed()

    def paused(self):
        """A context in which no other thread queues GPU work (a graph capture)."""
        return self.stager.paused() if self.stager is not None else contextlib.nullcontext()

    def targets(self, il: int) -> list[int]:
        layers = range(1, self.depth + 1) if il == 0 else [il + self.depth]
        return [m for m in layers if m < self.cache.n_layers]

    def input_buffer(self, il: int) -> torch.Tensor | None:
        """Where layer il's experts' input is kept for predicting its targets (None: it has none)."""
        return self.xs[il] if self.targets(il) else None

    def _row(self, m: int) -> int:
        """Layer m's first ring row."""
        return (m % self.rows) * self.k

    def after_router(self, il: int, h: torch.Tensor, kept: bool = False) -> None:
        """Predict and stage the targets of layer ``il``; ``h`` (1, n_embd): its experts' input,
        already in ``input_buffer(il)`` if ``kept``."""
        if self.stager is not None and il > 0:
            self.steps.claim(il, self._row(il))  # compute stream, after layer il's router
        targets = self.targets(il)
        if not targets:
            return
        if not kept:
            self.xs[il].copy_(h[0])  # the compute stream updates h in place next
        if self.inline:
            self._deferred.extend((m, il) for m in targets)
            return

        def stage_targets() -> None:
            for m in targets:
                self._stage(m, il)

        self.side.fork(stage_targets)

    def run_deferred(self) -> None:
        """``inline``: stage the targets predicted since the last call, on the compute stream."""
        deferred, self._deferred = self._deferred, []
        for m, source in deferred:
            self._stage(m, source)

    def begin_step(self) -> None:
        """Point every ring occupant home (compute stream, before the step's first layer)."""
        if self.stager is not None:
            self.seq.add_(1)
        self.steps.release_all()

    def join(self) -> None:
        """Make the compute stream wait for the staging so far (``inline``: run what is deferred)."""
        if self.inline:
            self.run_deferred()
        else:
            self.side.join()

    def _stage(self, m: int, source: int) -> None:
        """Predict layer m's experts from layer ``source``'s input and bring the misses in (DMA:
        hand those that read home to the stager)."""
        self.steps.predict(m, source)
        if self.stager is None:
            self.steps.stage(m, self._row(m))
            return
        self.cache.device.publish(self.stager, self.mailbox, self.seq, m, self.pred[m],
                                  self.cache.table.table[m], self.home[m])

    def device_counters(self) -> list[torch.Tensor]:
        """The statistics a captured step updates."""
        return [self.counters] + ([self.claim_waits] if self.stager is not None else [])

    def step_counts(self) -> PrefetchCounts:
        return PrefetchCounts(self.pred, self.predicted, self.staged, self.counters)

    def stats(self) -> dict:
        """``staged``: experts read from the ring when used; ``copied``: experts copied (with
        DMA also those that landed too late to be claimed)."""
        overlap, n_pred, staged, served, misses = (int(v) for v in self.counters.cpu().tolist())
        out = {"overlap": overlap / n_pred if n_pred else None, "staged": staged, "served": served,
               "precision": served / staged if staged else None, "recall": served / misses if misses else None,
               "copied": staged if self.stager is None else self.stager.copied}
        if self.stager is not None:
            spins, gave_up = (int(v) for v in self.claim_waits.cpu().tolist())
            out.update(late=self.stager.late, claim_spins=spins, claims_given_up=gave_up)
        return out

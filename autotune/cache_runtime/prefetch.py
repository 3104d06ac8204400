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

On the CPU (torch path) the same steps run eagerly in PyTorch. Precision and recall are
counted on the device against the step's actual selections.

``engine="dma"``: the side stream only predicts; the copies are made by the DMA engines,
queued by a host thread, and claimed on the compute stream (``dma_prefetch``).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from autotune.cache_runtime.dma_prefetch import DmaStager, publish_kernel, tag
from autotune.cache_runtime.expert_cache import ExpertCache
from autotune.cache_runtime.routing import route
from autotune.cache_runtime.step_counts import PrefetchCounts
from autotune.cache_runtime.torch_ops import TorchOps, rmsnorm

# int32 words per load, and programs per matrix. The copy is bound by PCIe latency: 16
# programs per matrix decoded 6% faster than 4 at 16 GiB (237 vs 223 tok/s, H200, with
# lfu_decay every 16 tokens and prefetch depth 2), their SM slots notwithstanding
COPY_WORDS, COPY_PROGRAMS = 1024, 16
# DMA prefetch: how many times the claim reads the layer's tags while a predicted copy is in
# flight (a read from GPU memory, well under a microsecond): without waiting, most copies landed
# just after their layer and were wasted (recall 0.17-0.49 on the GPU, run 7). At 12 GiB 1024
# reads decoded 12% faster than 256 (203.0 against 180.9 tok/s, depth 4), at 16 GiB 1% slower
# (260.1 against 262.2; H200, run 8)
CLAIM_WAIT_SPINS = 1024
# the prediction stream's priority (lower runs first; torch allows -1 and 0): its small kernels
# publish the predictions the DMA copies wait for, beside the compute stream's larger ones
SIDE_STREAM_PRIORITY = 0


@triton.jit
def stage_copy_kernel(pred_ptr, table_ptr, home_ptr, ring_ptr, ring_row, n0, n1, n2,
                      BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Copy matrix program_id(1) of each predicted expert that is not resident (its entry is
    its home address) into ring row ring_row + j; ``table_ptr``/``home_ptr``: the layer's rows."""
    j = tl.program_id(0)
    mat = tl.program_id(1)
    e = tl.load(pred_ptr + j).to(tl.int64)
    if tl.load(table_ptr + e * 3) == tl.load(home_ptr + e * 3):
        src = tl.load(home_ptr + e * 3 + mat).to(tl.pointer_type(tl.int32))
        dst = tl.load(ring_ptr + (ring_row + j) * 3 + mat).to(tl.pointer_type(tl.int32))
        src = tl.multiple_of(src, 16)
        dst = tl.multiple_of(dst, 16)
        n = tl.where(mat == 0, n0, tl.where(mat == 1, n1, n2))
        start = tl.program_id(2) * BLOCK * ITERS
        for i in range(ITERS):
            offs = start + i * BLOCK + tl.arange(0, BLOCK)
            ok = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=ok), mask=ok)


@triton.jit
def stage_commit_kernel(pred_ptr, table_ptr, home_ptr, ring_ptr, ring_row, occupant_ptr, staged_ptr,
                        flat_base, TOP_K: tl.constexpr, K_PAD: tl.constexpr):
    """Point the copied experts' entries at their ring rows; record occupants and staged flags."""
    j = tl.arange(0, K_PAD)
    ok = j < TOP_K
    e = tl.load(pred_ptr + j, mask=ok, other=0).to(tl.int64)
    do = ok & (tl.load(table_ptr + e * 3, mask=ok, other=0) == tl.load(home_ptr + e * 3, mask=ok, other=1))
    for c in tl.static_range(3):
        tl.store(table_ptr + e * 3 + c, tl.load(ring_ptr + (ring_row + j) * 3 + c, mask=do), mask=do)
    tl.store(occupant_ptr + ring_row + j, tl.where(do, flat_base + e, -1), mask=ok)
    tl.store(staged_ptr + j, do.to(tl.int32), mask=ok)


@triton.jit
def _release_rows(occupant_ptr, table_ptr, home_ptr, ring_ptr, rows, ok):
    """Point the rows' occupants back home (if their entry still points there); empty the rows.
    ``table_ptr``/``home_ptr``: the whole tables (an occupant is a flat entry index)."""
    o = tl.load(occupant_ptr + rows, mask=ok, other=-1)
    valid = ok & (o >= 0)
    o = tl.where(valid, o, 0)
    back = valid & (tl.load(table_ptr + o * 3, mask=valid, other=1) == tl.load(ring_ptr + rows * 3, mask=valid, other=0))
    for c in tl.static_range(3):
        tl.store(table_ptr + o * 3 + c, tl.load(home_ptr + o * 3 + c, mask=back), mask=back)
    tl.store(occupant_ptr + rows, tl.zeros_like(o) - 1, mask=ok)


@triton.jit
def ring_release_kernel(occupant_ptr, table_ptr, home_ptr, ring_ptr, ring_row,
                        TOP_K: tl.constexpr, K_PAD: tl.constexpr):
    """Point the ring rows' occupants back home (if their entry still points here); empty the rows."""
    j = tl.arange(0, K_PAD)
    _release_rows(occupant_ptr, table_ptr, home_ptr, ring_ptr, ring_row + j, j < TOP_K)


@triton.jit
def ring_claim_kernel(tags_ptr, seq_ptr, pred_ptr, table_ptr, home_ptr, ring_ptr, ring_row, occupant_ptr,
                      staged_ptr, waits_ptr, layer, n_layers, n_expert,
                      TOP_K: tl.constexpr, K_PAD: tl.constexpr, WAIT_SPINS: tl.constexpr):
    """DMA prefetch (``dma_prefetch``): release the layer's ring rows, wait (at most WAIT_SPINS
    reads of the tags) for the copies of this step's predicted experts that still read home,
    then point each landed expert of this step and layer at its row. ``table_ptr``/``home_ptr``:
    the whole tables; ``pred_ptr``/``staged_ptr``: the layer's predictions and flags; the
    stager copies prediction j into the layer's row j. ``waits_ptr``: adds the spins to [0]
    and, if the wait ran out with a copy still in flight, 1 to [1]."""
    j = tl.arange(0, K_PAD)
    ok = j < TOP_K
    rows = ring_row + j
    _release_rows(occupant_ptr, table_ptr, home_ptr, ring_ptr, rows, ok)
    base = (tl.load(seq_ptr) * n_layers + layer) * n_expert
    p = tl.load(pred_ptr + j, mask=ok, other=0).to(tl.int64)
    predicted = layer * n_expert + p
    awaited = ok & (tl.load(table_ptr + predicted * 3, mask=ok, other=0) == tl.load(home_ptr + predicted * 3, mask=ok, other=1))
    want = base + p
    t = tl.load(tags_ptr + rows, mask=ok, other=-1, volatile=True)
    spins = 0
    while (tl.max((awaited & (t != want)).to(tl.int32), axis=0) > 0) & (spins < WAIT_SPINS):
        t = tl.load(tags_ptr + rows, mask=ok, other=-1, volatile=True)
        spins += 1
    tl.store(waits_ptr, tl.load(waits_ptr) + spins)
    timed_out = tl.max((awaited & (t != want)).to(tl.int64), axis=0)
    tl.store(waits_ptr + 1, tl.load(waits_ptr + 1) + timed_out)
    e = t - base
    valid = ok & (e >= 0) & (e < n_expert)
    flat = layer * n_expert + tl.where(valid, e, 0)
    do = valid & (tl.load(table_ptr + flat * 3, mask=valid, other=0) == tl.load(home_ptr + flat * 3, mask=valid, other=1))
    for c in tl.static_range(3):
        tl.store(table_ptr + flat * 3 + c, tl.load(ring_ptr + rows * 3 + c, mask=do), mask=do)
    tl.store(occupant_ptr + rows, tl.where(do, flat, -1), mask=ok)
    tl.store(staged_ptr + j, do.to(tl.int32), mask=ok)


class Prefetcher:
    def __init__(self, ops: TorchOps, cache: ExpertCache, depth: int, engine: str = "sm"):
        """``engine``: who copies the predicted misses, "sm" copy programs in the step or the "dma" engines."""
        self.ops, self.cache, self.depth = ops, cache, depth
        self.rows = depth + 1  # ring rows of k experts
        dev, k, n_layers = cache.device, cache.top_k, cache.n_layers
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
        self.triton = cache.triton  # the torch path reads cache.resolve
        # each layer's input to its experts, kept apart: the side stream may still be predicting
        # from layer l's while the compute stream saves layer l + 1's
        self.xs = torch.empty(n_layers, ops.cfg.n_embd, dtype=torch.float32, device=dev)
        self.side = torch.cuda.Stream(dev, priority=SIDE_STREAM_PRIORITY) if dev.type == "cuda" else None
        cache.register(self.ring)
        if self.triton:
            self._scratch = [(torch.empty(ops.cfg.n_expert, dtype=torch.float32, device=dev),
                              torch.empty(ops.cfg.n_embd, dtype=torch.float32, device=dev),
                              torch.zeros(1, dtype=torch.int32, device=dev),
                              torch.empty(k, dtype=torch.float32, device=dev)) for _ in range(n_layers)]
        self.stager = self._dma_stager() if engine == "dma" else None

    def _dma_stager(self) -> DmaStager:
        dev, n_layers = self.cache.device, self.cache.n_layers
        self.seq = torch.zeros(1, dtype=torch.int64, device=dev)  # the decode step's number, from 1
        self.tags = torch.full((self.rows * self.k,), -1, dtype=torch.int64, device=dev)
        self.mailbox = torch.zeros(n_layers, self.k + 1, dtype=torch.int64, pin_memory=dev.type == "cuda")
        self.claim_waits = torch.zeros(2, dtype=torch.int64, device=dev)  # tag reads, claims that gave up
        # its own stream: on the cache's copy stream, a rebalance's copies wait for every step the
        # host has queued, and prefetch copies queued behind them would land steps too late
        stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        stager = DmaStager(self.mailbox, self.tags, self.ring, self.cache.home, self.depth, stream)
        if dev.type == "cuda":
            stager.start()
        return stager

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

    def after_router(self, il: int, h: torch.Tensor, kept: bool = False) -> None:
        """Predict and stage the targets of layer ``il``; ``h`` (1, n_embd): its experts' input,
        already in ``input_buffer(il)`` if ``kept``."""
        if self.stager is not None and il > 0:
            self._claim(il)
        targets = self.targets(il)
        if not targets:
            return
        if not kept:
            self.xs[il].copy_(h[0])  # the compute stream updates h in place next
        if self.side is None:
            for m in targets:
                self._stage(m, il)
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            for m in targets:
                self._stage(m, il)

    def begin_step(self) -> None:
        """Point every ring occupant home (compute stream, before the step's first layer)."""
        table = self.cache.table.table
        if self.stager is not None:
            self.seq.add_(1)
        if not self.triton:
            self._release_torch(range(self.rows * self.k), table)
            return
        n = self.rows * self.k
        ring_release_kernel[(1,)](self.occupant, table, self.home, self.ring_addr, 0, TOP_K=n,
                                  K_PAD=triton.next_power_of_2(n))

    def join(self) -> None:
        if self.side is not None:
            torch.cuda.current_stream().wait_stream(self.side)

    def _predict(self, m: int, source: int) -> None:
        ops, lw, cfg = self.ops, self.ops.w.layers[m], self.ops.cfg
        if not self.triton:
            x = rmsnorm(self.xs[source][None], lw.ffn_norm, cfg.rms_eps)
            _, ids = route(ops.linear(x, lw.router), self.k, cfg.norm_topk)
            self.pred[m].copy_(ids[0])
            return
        logits, xn, done, weights = self._scratch[m]
        ops.route(self.xs[source], m, logits, xn, done, self.pred[m], weights)

    def _stage(self, m: int, source: int) -> None:
        """Predict layer m's experts from layer ``source``'s input and bring the misses in."""
        self._predict(m, source)
        if self.stager is not None:
            self._publish(m)
            return
        row = (m % self.rows) * self.k
        table = self.cache.table.table
        if not self.triton:
            self._stage_torch(m, row, table)
            return
        n_expert, k_pad = self.cache.n_expert, triton.next_power_of_2(self.k)
        ring_release_kernel[(1,)](self.occupant, table, self.home, self.ring_addr, row, TOP_K=self.k, K_PAD=k_pad)
        iters = triton.cdiv(max(self.words), COPY_WORDS * COPY_PROGRAMS)
        stage_copy_kernel[(self.k, 3, COPY_PROGRAMS)](self.pred[m], table[m], self.home[m], self.ring_addr, row,
                                                      *self.words, BLOCK=COPY_WORDS, ITERS=iters, num_warps=4)
        stage_commit_kernel[(1,)](self.pred[m], table[m], self.home[m], self.ring_addr, row, self.occupant,
                                  self.staged[m], m * n_expert, TOP_K=self.k, K_PAD=k_pad)

    def _publish(self, m: int) -> None:
        """DMA: hand layer m's predicted experts that read home to the stager (the mailbox on the
        GPU, a call on the CPU)."""
        table = self.cache.table.table
        if self.cache.device.type == "cpu":
            pred = self.pred[m].long()
            at_home = table[m, pred, 0] == self.home[m, pred, 0]
            self.stager.stage(int(self.seq), m, torch.where(at_home, pred, -1).numpy())
            return
        publish_kernel[(1,)](self.pred[m], table[m], self.home[m], self.seq, self.mailbox.data_ptr(), m,
                             TOP_K=self.k, K_PAD=triton.next_power_of_2(self.k))

    def _claim(self, m: int) -> None:
        """DMA, compute stream, after layer m's router: read layer m's landed ring rows."""
        row, table, n_expert = (m % self.rows) * self.k, self.cache.table.table, self.cache.n_expert
        if not self.triton:
            self._release_torch(range(row, row + self.k), table)
            base = tag(int(self.seq), m, 0, self.cache.n_layers, n_expert)
            for j in range(self.k):
                e = int(self.tags[row + j]) - base
                self._take_row_torch(table, m, row + j, j, e if 0 <= e < n_expert else None)
            return
        ring_claim_kernel[(1,)](self.tags, self.seq, self.pred[m], table, self.home, self.ring_addr, row,
                                self.occupant, self.staged[m], self.claim_waits, m, self.cache.n_layers, n_expert,
                                TOP_K=self.k,
                                K_PAD=triton.next_power_of_2(self.k), WAIT_SPINS=CLAIM_WAIT_SPINS)

    def _stage_torch(self, m: int, row: int, table: torch.Tensor) -> None:
        """The same three steps, eagerly (CPU)."""
        self._release_torch(range(row, row + self.k), table)
        for j, e in enumerate(self.pred[m].tolist()):
            if self._take_row_torch(table, m, row + j, j, e):
                for dst, src in zip(self.ring, self.cache.home[m]):
                    dst[row + j].copy_(src[e])

    def _take_row_torch(self, table: torch.Tensor, m: int, ring_row: int, j: int, e: int | None) -> bool:
        """Point layer m's expert e at ``ring_row`` if it still reads home, and record the row's
        occupant and prediction j's staged flag (e None: nothing to take)."""
        take = e is not None and int(table[m, e, 0]) == int(self.home[m, e, 0])
        if take:
            table[m, e] = self.ring_addr[ring_row]
        self.occupant[ring_row] = m * self.cache.n_expert + e if take else -1
        self.staged[m, j] = int(take)
        return take

    def _release_torch(self, rows: range, table: torch.Tensor) -> None:
        flat, home = table.view(-1, 3), self.home.view(-1, 3)
        for i in rows:
            o = int(self.occupant[i])
            if o >= 0 and int(flat[o, 0]) == int(self.ring_addr[i, 0]):
                flat[o] = home[o]
            self.occupant[i] = -1

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

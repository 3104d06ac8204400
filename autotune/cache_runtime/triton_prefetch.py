"""The prefetch ring's steps on Triton kernels (``prefetch.Prefetcher`` says what they do):
on the side stream, copy each predicted non-resident expert from pinned host memory into a
ring row, then repoint its table entry (``stage_copy_kernel``, ``stage_commit_kernel``); at
each step's start point the ring's occupants home (``ring_release_kernel``); with DMA copies,
claim the landed rows on the compute stream (``ring_claim_kernel``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from autotune.cache_runtime.prefetch import Prefetcher, RingSteps
from autotune.cache_runtime.triton_ops import TritonOps

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


class TritonRingSteps(RingSteps):
    def __init__(self, prefetcher: Prefetcher):
        super().__init__(prefetcher)
        p, dev = prefetcher, prefetcher.xs.device
        self.ops: TritonOps = p.ops
        cfg = self.ops.cfg
        self._scratch = [(torch.empty(cfg.n_expert, dtype=torch.float32, device=dev),
                          torch.empty(cfg.n_embd, dtype=torch.float32, device=dev),
                          torch.zeros(1, dtype=torch.int32, device=dev),
                          torch.empty(p.k, dtype=torch.float32, device=dev)) for _ in range(p.cache.n_layers)]

    def release_all(self) -> None:
        p = self.p
        n = p.rows * p.k
        ring_release_kernel[(1,)](p.occupant, p.cache.table.table, p.home, p.ring_addr, 0, TOP_K=n,
                                  K_PAD=triton.next_power_of_2(n))

    def predict(self, m: int, source: int) -> None:
        logits, xn, done, weights = self._scratch[m]
        self.ops.route(self.p.xs[source], m, logits, xn, done, self.p.pred[m], weights)

    def stage(self, m: int, row: int) -> None:
        p, table = self.p, self.p.cache.table.table
        n_expert, k_pad = p.cache.n_expert, triton.next_power_of_2(p.k)
        ring_release_kernel[(1,)](p.occupant, table, p.home, p.ring_addr, row, TOP_K=p.k, K_PAD=k_pad)
        iters = triton.cdiv(max(p.words), COPY_WORDS * COPY_PROGRAMS)
        stage_copy_kernel[(p.k, 3, COPY_PROGRAMS)](p.pred[m], table[m], p.home[m], p.ring_addr, row,
                                                   *p.words, BLOCK=COPY_WORDS, ITERS=iters, num_warps=4)
        stage_commit_kernel[(1,)](p.pred[m], table[m], p.home[m], p.ring_addr, row, p.occupant,
                                  p.staged[m], m * n_expert, TOP_K=p.k, K_PAD=k_pad)

    def claim(self, m: int, row: int) -> None:
        p = self.p
        ring_claim_kernel[(1,)](p.tags, p.seq, p.pred[m], p.cache.table.table, p.home, p.ring_addr, row,
                                p.occupant, p.staged[m], p.claim_waits, m, p.cache.n_layers, p.cache.n_expert,
                                TOP_K=p.k,
                                K_PAD=triton.next_power_of_2(p.k), WAIT_SPINS=CLAIM_WAIT_SPINS)

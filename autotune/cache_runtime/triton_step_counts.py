"""``step_counts.count_step`` as one Triton kernel (one program over layers x top-k)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def step_counts_kernel(ids_ptr, in_slot_ptr, hits_ptr, tokens_ptr, pred_ptr, predicted_ptr, staged_ptr,
                       counters_ptr, n_layers, n_expert, TOP_K: tl.constexpr, L_PAD: tl.constexpr,
                       K_PAD: tl.constexpr, PREFETCH: tl.constexpr):
    layer = tl.arange(0, L_PAD)[:, None]
    j = tl.arange(0, K_PAD)[None, :]
    ok = (layer < n_layers) & (j < TOP_K)
    selected = tl.load(ids_ptr + layer * TOP_K + j, mask=ok, other=0)
    hit = tl.load(in_slot_ptr + layer * n_expert + selected, mask=ok, other=0) != 0
    hit = hit & ok
    rows = tl.arange(0, L_PAD)
    hits = tl.load(hits_ptr + rows, mask=rows < n_layers, other=0)
    tl.store(hits_ptr + rows, hits + tl.sum(hit.to(tl.int64), 1), mask=rows < n_layers)
    tl.store(tokens_ptr, tl.load(tokens_ptr) + 1)
    if PREFETCH:
        predicted = (tl.load(predicted_ptr + layer, mask=layer < n_layers, other=0) != 0) & ok
        pred = tl.load(pred_ptr + layer * TOP_K + j, mask=ok, other=-1)
        chosen = tl.where(ok, selected, -2)  # padding matches no prediction
        used = tl.sum((pred[:, :, None] == tl.reshape(chosen, (L_PAD, 1, K_PAD))).to(tl.int32), 2) > 0
        used = used & predicted
        staged = (tl.load(staged_ptr + layer * TOP_K + j, mask=ok, other=0) != 0) & predicted
        miss = ~hit & predicted
        n = tl.arange(0, 8)
        add = tl.where(n == 0, tl.sum(tl.sum(used.to(tl.int64), 1), 0), 0)
        add += tl.where(n == 1, tl.sum(tl.sum(predicted.to(tl.int64), 1), 0), 0)
        add += tl.where(n == 2, tl.sum(tl.sum(staged.to(tl.int64), 1), 0), 0)
        add += tl.where(n == 3, tl.sum(tl.sum((staged & used).to(tl.int64), 1), 0), 0)
        add += tl.where(n == 4, tl.sum(tl.sum(miss.to(tl.int64), 1), 0), 0)
        counters = tl.load(counters_ptr + n, mask=n < 5, other=0)
        tl.store(counters_ptr + n, counters + add, mask=n < 5)

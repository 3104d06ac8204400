"""Decode (one token) kernels: quantized matrix-vector products, fused where it pays.

- ``gemv_kernel``: out = W x (+ residual), optionally RMSNorm-ing x on the way in, over one
  or two weights stacked by rows (q and k share a launch).
- ``router_kernel``: RMSNorm then the router GEMV, the normalized input saved for the
  experts, and (in whichever program finishes last) softmax top-k into ids and weights.
- ``moe_gate_up_kernel``: glu(gate x, up x) for every selected expert, in one launch
  (``torch_ops.glu``: SwiGLU, or gpt-oss's clamped one; with the experts' biases if any).
- ``moe_down_kernel``: residual + sum over the selected experts of weight * (down h (+ bias)).

Experts are reached through a device table of addresses (int64, per expert: gate, up,
down), so the selected ids never leave the device and experts may live anywhere the GPU
can read, VRAM or pinned host memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime import triton_int8
from autotune.cache_runtime.torch_ops import OAI_ALPHA, OAI_LIMIT
from autotune.cache_runtime.triton_tiles import superblock_dots

_ALPHA, _LIMIT = tl.constexpr(OAI_ALPHA), tl.constexpr(OAI_LIMIT)


@triton.jit
def _rms_inv(x_ptr, n: tl.constexpr, eps, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    return 1.0 / tl.sqrt(tl.sum(x * x, 0) / n + eps)


@triton.jit
def _chunk_dot(base, x_base, norm_base, s0, K: tl.constexpr, iq_grid, QT: tl.constexpr, SB_BYTES: tl.constexpr,
               HAS_NORM: tl.constexpr, S: tl.constexpr):
    """(S, R) dot products of R weight rows of K elements with the input, super-blocks s0 .. s0 + S.

    ``base``, ``x_base``, ``norm_base``: (R,) pointers to each row's weights, input and
    norm weight; ``iq_grid``: the grid types' table (``triton_tiles.grid_arg``). Every row
    addresses its own input (a broadcast input would be laid out without the row axis,
    and Triton then spreads a row over several warps: each reduction would cross warps
    through shared memory). Kernels loop over chunks
    themselves: the loop bound must be a kernel constexpr for Triton's interpreter.

    Where K is not whole super-blocks (rows of 32-element blocks, 2880 wide), the last one
    starts at element K - 256 (a block boundary) and its first 256 - K % 256 elements,
    the previous super-block's, are masked out of the input; whole rows take no mask.
    """
    n_sb: tl.constexpr = (K + 255) // 256
    s = s0 + tl.arange(0, S)
    s_ok = s < n_sb
    s = tl.minimum(s, n_sb - 1)
    if K % 256 != 0:
        start = tl.minimum(s * 256, K - 256)
        blk_off = start // 32 * (SB_BYTES // 8)
    else:
        start = s * 256
        blk_off = s * SB_BYTES
    blk = base[None, :] + blk_off[:, None]
    xp = x_base[None, :] + start[:, None]
    npp = norm_base[None, :] + start[:, None]
    lo = (s * 256 - start)[:, None]  # (S, 1): used only where masked
    return tl.where(s_ok[:, None], superblock_dots(blk, xp, npp, lo, iq_grid, QT, HAS_NORM, K % 256 != 0), 0.0)


@triton.jit
def gemv_kernel(x_ptr, norm_ptr, eps, w0_ptr, w1_ptr, n0, resid_ptr, out_ptr, N, K: tl.constexpr, row_stride,
                iq_grid, QT: tl.constexpr, SB_BYTES: tl.constexpr, HAS_NORM: tl.constexpr,
                HAS_RESID: tl.constexpr, R: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[r] = (W x)[r] (+ resid[r]); rows below n0 from w0, the rest from w1."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    r_ok = rows < N
    rows = tl.minimum(rows, N - 1)
    half = row_stride // 2  # see moe_down_kernel
    base = tl.where(rows < n0, w0_ptr + rows.to(tl.int64) * half * 2,
                    w1_ptr + (rows - n0).to(tl.int64) * half * 2)
    same = tl.zeros([R], tl.int32)
    acc = tl.zeros([S, R], tl.float32)
    for s0 in range(0, (K + 255) // 256, S):
        acc += _chunk_dot(base, x_ptr + same, norm_ptr + same, s0, K, iq_grid, QT, SB_BYTES, HAS_NORM, S)
    acc = tl.sum(acc, 0)
    if HAS_NORM:
        acc = acc * _rms_inv(x_ptr, K, eps, BLOCK_K)
    if HAS_RESID:
        acc += tl.load(resid_ptr + rows)
    tl.store(out_ptr + rows, acc, mask=r_ok)


@triton.jit
def _route(logits_ptr, bias_ptr, select_ptr, ids_ptr, wts_ptr, n_expert, scale, E_PAD: tl.constexpr,
           TOP_K: tl.constexpr, NORM_TOPK: tl.constexpr, GATING: tl.constexpr, HAS_BIAS: tl.constexpr,
           HAS_SELECT: tl.constexpr, SCALED: tl.constexpr):
    """``routing.route`` without expert groups: the router's bias added to the logits (stored
    back: gpt-oss), the gate (softmax, each expert's sigmoid, or the logits themselves with a
    softmax over the chosen k: "softmax_weight"), top k of the gate plus the selection bias
    (ties: lowest id) into ids and weights, in rank order; weights renormalized over the k if
    NORM_TOPK (the sum clamped as llama.cpp does), times ``scale`` if SCALED.

    Each expert's rank is the count of experts ahead of it (a higher score, or the same
    score and a lower id), all ranks in one comparison tile: one reduction instead of two
    per selected expert, which made this the slowest part of the router.
    """
    e = tl.arange(0, E_PAD)
    valid = e < n_expert
    # .cg: read the other programs' fresh stores from L2, never a stale L1 line
    logits = tl.load(logits_ptr + e, mask=valid, other=-float("inf"), cache_modifier=".cg")
    if HAS_BIAS:
        logits += tl.load(bias_ptr + e, mask=valid, other=0.0)
        tl.store(logits_ptr + e, logits, mask=valid)
    if GATING == "sigmoid":
        p = tl.sigmoid(logits)
    elif GATING == "softmax":
        p = tl.exp(logits - tl.max(logits, 0))
        p = p / tl.sum(p, 0)
    else:
        p = logits
    score = p
    if HAS_SELECT:
        score += tl.load(select_ptr + e, mask=valid, other=0.0)
    score = tl.where(valid, score, -float("inf"))
    mine, theirs = score[:, None], score[None, :]
    ahead = (theirs > mine) | ((theirs == mine) & (e[None, :] < e[:, None]))
    rank = tl.sum(ahead.to(tl.int32), 1)
    chosen = rank < TOP_K
    weights = p
    if GATING == "softmax_weight":
        weights = tl.exp(logits - tl.max(tl.where(chosen, logits, -float("inf")), 0))
        weights = weights / tl.sum(tl.where(chosen, weights, 0.0), 0)
    if NORM_TOPK:
        weights = weights / tl.maximum(tl.sum(tl.where(chosen, weights, 0.0), 0), 6.103515625e-5)
    if SCALED:
        weights = weights * scale
    tl.store(ids_ptr + rank, e, mask=chosen)
    tl.store(wts_ptr + rank, weights, mask=chosen)


@triton.jit
def router_kernel(x_ptr, norm_ptr, eps, w_ptr, logits_ptr, xn_ptr, keep_ptr, done_ptr, ids_ptr, wts_ptr,
                  xq_ptr, xd_ptr, xs_ptr, bias_ptr, select_ptr, scale, N, row_stride, K: tl.constexpr, iq_grid,
                  QT: tl.constexpr, SB_BYTES: tl.constexpr, R: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr,
                  E_PAD: tl.constexpr, TOP_K: tl.constexpr, NORM_TOPK: tl.constexpr, KEEP: tl.constexpr,
                  INT8: tl.constexpr, GATING: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SELECT: tl.constexpr,
                  SCALED: tl.constexpr):
    """logits = W_router RMSNorm(x); program 0 also stores RMSNorm(x) for the experts (and x
    itself at ``keep_ptr`` if KEEP: the prefetcher's input, saved before the experts add to
    x in place; with INT8, RMSNorm(x) in 8-bit blocks at ``xq_ptr``, ``xd_ptr``, ``xs_ptr`` too:
    ``triton_int8.quantize_store``), and the last program to finish (counted on ``done_ptr``,
    which it resets to 0) selects the experts: ids and weights (TOP_K,), as ``_route`` says
    (the router's bias at ``bias_ptr``, the selection bias at ``select_ptr``)."""
    pid = tl.program_id(0)
    rows = pid * R + tl.arange(0, R)
    r_ok = rows < N
    rows = tl.minimum(rows, N - 1)
    inv = _rms_inv(x_ptr, K, eps, BLOCK_K)
    base = w_ptr + rows.to(tl.int64) * (row_stride // 2) * 2  # see moe_down_kernel
    same = tl.zeros([R], tl.int32)
    acc = tl.zeros([S, R], tl.float32)
    for s0 in range(0, (K + 255) // 256, S):
        acc += _chunk_dot(base, x_ptr + same, norm_ptr + same, s0, K, iq_grid, QT, SB_BYTES, True, S)
    tl.store(logits_ptr + rows, tl.sum(acc, 0) * inv, mask=r_ok)
    if pid == 0:
        offs = tl.arange(0, BLOCK_K)
        ok = offs < K
        x = tl.load(x_ptr + offs, mask=ok, other=0.0)
        xn = x * inv * tl.load(norm_ptr + offs, mask=ok, other=0.0)
        tl.store(xn_ptr + offs, xn, mask=ok)
        if INT8:
            triton_int8.quantize_store(xn, xq_ptr, xd_ptr, xs_ptr, K, BLOCK_K)
        if KEEP:
            tl.store(keep_ptr + offs, x, mask=ok)
    tl.debug_barrier()  # all of this program's logits are stored before it counts as done
    if tl.atomic_add(done_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        _route(logits_ptr, bias_ptr, select_ptr, ids_ptr, wts_ptr, N, scale, E_PAD, TOP_K, NORM_TOPK, GATING,
               HAS_BIAS, HAS_SELECT, SCALED)
        tl.atomic_xchg(done_ptr, 0)


@triton.jit
def _glu(gate, up, ACT: tl.constexpr):
    """``torch_ops.glu``: silu(gate) * up for "silu", else gpt-oss's clamped SwiGLU."""
    if ACT == "silu":
        return gate / (1.0 + tl.exp(-gate)) * up
    gate = tl.minimum(gate, _LIMIT)
    up = tl.minimum(tl.maximum(up, -_LIMIT), _LIMIT)
    return gate * tl.sigmoid(_ALPHA * gate) * (up + 1.0)


@triton.jit
def moe_gate_up_kernel(ids_ptr, on_ptr, xn_ptr, table_ptr, gate_b_ptr, up_b_ptr, h_ptr, xq_ptr, xd_ptr, xs_ptr,
                       n_ff, row_stride, K: tl.constexpr, iq_grid, QT: tl.constexpr, SB_BYTES: tl.constexpr,
                       R: tl.constexpr, S: tl.constexpr, SKIP: tl.constexpr, ACT: tl.constexpr,
                       HAS_GATE_BIAS: tl.constexpr, HAS_UP_BIAS: tl.constexpr, INT8: tl.constexpr):
    """h[slot] = glu(gate_e xn (+ gate_b[e]), up_e xn (+ up_b[e]), ACT) for the slot-th selected
    expert e (``_glu``; biases (n_expert, n_ff) float32); with SKIP, only for the slots
    ``on_ptr`` (top_k,) marks (the CPU computes the others; their h is not written). With
    INT8, xn is read as the router stored it in 8-bit blocks (``triton_int8``), not at ``xn_ptr``.

    Grid (top_k, cdiv(n_ff, R / 2)); R "virtual rows" interleave gate and up rows.
    """
    slot = tl.program_id(0)
    pid = tl.program_id(1)
    if SKIP:
        if tl.load(on_ptr + slot).to(tl.int32) == 0:
            return
    expert = tl.load(ids_ptr + slot).to(tl.int64)
    entry = table_ptr + expert * 3
    gate = tl.multiple_of(tl.load(entry).to(tl.pointer_type(tl.uint8)), 16)
    up = tl.multiple_of(tl.load(entry + 1).to(tl.pointer_type(tl.uint8)), 16)
    r = tl.arange(0, R)
    row = tl.minimum(pid * (R // 2) + r // 2, n_ff - 1).to(tl.int64)
    offset = row * (row_stride // 2) * 2  # see moe_down_kernel
    base = tl.where(r % 2 == 1, up + offset, gate + offset)
    same = tl.zeros([R], tl.int32)
    acc = tl.zeros([S, R], tl.float32)
    for s0 in range(0, (K + 255) // 256, S):
        if INT8:
            acc += triton_int8.chunk_dots(base, same, same, xq_ptr, xd_ptr, xs_ptr, s0, K, QT, SB_BYTES, S)
        else:
            acc += _chunk_dot(base, xn_ptr + same, xn_ptr + same, s0, K, iq_grid, QT, SB_BYTES, False, S)
    acc = tl.sum(acc, 0)
    g, u = tl.split(tl.reshape(acc, (R // 2, 2)))
    out_rows = pid * (R // 2) + tl.arange(0, R // 2)
    out_ok = out_rows < n_ff
    if HAS_GATE_BIAS:
        g += tl.load(gate_b_ptr + expert * n_ff + out_rows, mask=out_ok, other=0.0)
    if HAS_UP_BIAS:
        u += tl.load(up_b_ptr + expert * n_ff + out_rows, mask=out_ok, other=0.0)
    tl.store(h_ptr + slot * n_ff + out_rows, _glu(g, u, ACT), mask=out_ok)


@triton.jit
def moe_down_kernel(h_ptr, ids_ptr, on_ptr, wts_ptr, table_ptr, b_ptr, resid_ptr, hq_ptr, hd_ptr, hs_ptr, D,
                    K: tl.constexpr, row_stride, iq_grid, QT: tl.constexpr, SB_BYTES: tl.constexpr,
                    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BN: tl.constexpr, S: tl.constexpr,
                    SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, INT8: tl.constexpr):
    """resid[rows] += sum over slots of weight * (down_e h[slot] (+ b[e]))[rows] (biases
    (n_expert, D) float32); with SKIP, over the slots ``on_ptr`` (top_k,) marks only. With INT8,
    h is read in 8-bit blocks (``triton_int8.quantize_rows_kernel``'s rows at ``hq_ptr``,
    ``hd_ptr``, ``hs_ptr``), not at ``h_ptr``.

    Each program owns BN output rows and reads them from all selected experts at once
    (K_PAD * BN virtual rows), so the sum is deterministic. A skipped slot's virtual rows read
    those of the first marked slot again (already on their way: no second read of memory)
    and add nothing; with no slot marked, the program stores nothing.
    """
    r = tl.arange(0, K_PAD * BN)
    slot = r // BN
    row = tl.program_id(0) * BN + r % BN
    ok = (slot < TOP_K) & (row < D)
    slot = tl.minimum(slot, TOP_K - 1)
    if SKIP:
        on = tl.load(on_ptr + slot).to(tl.int32) != 0
        first = tl.min(tl.where(on, slot, TOP_K), 0)
        if first == TOP_K:
            return
        ok = ok & on
        slot = tl.where(on, slot, first)
    expert = tl.load(ids_ptr + slot).to(tl.int64)
    weight = tl.load(wts_ptr + slot)
    down = tl.multiple_of(tl.load(table_ptr + expert * 3 + 2).to(tl.pointer_type(tl.uint8)), 16)
    row = tl.minimum(row, D - 1)
    # rows of GGML blocks have even byte counts: written so, the compiler knows it and
    # keeps 2-byte loads (Q6_K rows of 768 are 630 bytes, not a multiple of 16)
    base = down + row.to(tl.int64) * (row_stride // 2) * 2
    acc = tl.zeros([S, K_PAD * BN], tl.float32)
    for s0 in range(0, (K + 255) // 256, S):
        if INT8:
            acc += triton_int8.chunk_dots(base, slot * (K // 4), slot * (K // 32), hq_ptr, hd_ptr, hs_ptr, s0, K,
                                          QT, SB_BYTES, S)
        else:
            acc += _chunk_dot(base, h_ptr + slot * K, h_ptr + slot * K, s0, K, iq_grid, QT, SB_BYTES, False, S)
    acc = tl.sum(acc, 0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert * D + row)
    acc = tl.where(ok, acc * weight, 0.0)
    out = tl.sum(tl.reshape(acc, (K_PAD, BN)), 0)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rows_ok = rows < D
    resid = tl.load(resid_ptr + rows, mask=rows_ok, other=0.0)
    tl.store(resid_ptr + rows, resid + out, mask=rows_ok)

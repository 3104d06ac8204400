"""Decode (one token) kernels: quantized matrix-vector products, fused where it pays.

- ``gemv_kernel``: out = W x (+ residual), optionally RMSNorm-ing x on the way in, over one
  or two weights stacked by rows (q and k share a launch).
- ``router_kernel``: RMSNorm then the router GEMV, and the normalized input saved for the
  experts.
- ``moe_gate_up_kernel``: softmax top-k from the router logits (each program recomputes it:
  128 values), then silu(gate x) * up x for every selected expert, in one launch.
- ``moe_down_kernel``: residual + sum over the selected experts of weight * down h.

Experts are reached through a device table of addresses (int64, per expert: gate, up,
down), so the selected ids never leave the device and experts may live anywhere the GPU
can read, VRAM or pinned host memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from autotune.cache_runtime.triton_tiles import superblock_dots


@triton.jit
def _rms_inv(x_ptr, n: tl.constexpr, eps, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    return 1.0 / tl.sqrt(tl.sum(x * x, 0) / n + eps)


@triton.jit
def _chunk_dot(base, x_base, norm_ptr, s0, n_sb, QT: tl.constexpr, SB_BYTES: tl.constexpr,
               HAS_NORM: tl.constexpr, X_PER_ROW: tl.constexpr, S: tl.constexpr):
    """(R,) dot products of R weight rows with the input, over super-blocks s0 .. s0 + S.

    ``base``: (R,) row start pointers. The input starts at ``x_base``: one pointer for all
    rows, or (R,) pointers when X_PER_ROW (the down projection: each row reads its own
    expert's hidden vector). Kernels loop over chunks themselves: the loop bound must be
    a kernel constexpr for Triton's interpreter (the CPU tests).
    """
    s = s0 + tl.arange(0, S)
    s_ok = s < n_sb
    s = tl.minimum(s, n_sb - 1)
    blk = base[:, None] + (s * SB_BYTES)[None, :]
    if X_PER_ROW:
        xp = x_base[:, None] + (s * 256)[None, :]
    else:
        xp = (x_base + s * 256)[None, :]
    npp = (norm_ptr + s * 256)[None, :]
    part = superblock_dots(blk, xp, npp, QT, HAS_NORM)
    return tl.sum(tl.where(s_ok[None, :], part, 0.0), 1)


@triton.jit
def gemv_kernel(x_ptr, norm_ptr, eps, w0_ptr, w1_ptr, n0, resid_ptr, out_ptr, N, K: tl.constexpr, row_stride,
                QT: tl.constexpr, SB_BYTES: tl.constexpr, HAS_NORM: tl.constexpr,
                HAS_RESID: tl.constexpr, R: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[r] = (W x)[r] (+ resid[r]); rows below n0 from w0, the rest from w1."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    r_ok = rows < N
    rows = tl.minimum(rows, N - 1)
    base = tl.where(rows < n0, w0_ptr + rows.to(tl.int64) * row_stride,
                    w1_ptr + (rows - n0).to(tl.int64) * row_stride)
    acc = tl.zeros([R], tl.float32)
    for s0 in range(0, K // 256, S):
        acc += _chunk_dot(base, x_ptr, norm_ptr, s0, K // 256, QT, SB_BYTES, HAS_NORM, False, S)
    if HAS_NORM:
        acc = acc * _rms_inv(x_ptr, K, eps, BLOCK_K)
    if HAS_RESID:
        acc += tl.load(resid_ptr + rows)
    tl.store(out_ptr + rows, acc, mask=r_ok)


@triton.jit
def router_kernel(x_ptr, norm_ptr, eps, w_ptr, logits_ptr, xn_ptr, N, K: tl.constexpr, row_stride,
                  QT: tl.constexpr, SB_BYTES: tl.constexpr, R: tl.constexpr, S: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """logits = W_router RMSNorm(x); program 0 also stores RMSNorm(x) for the experts."""
    pid = tl.program_id(0)
    rows = pid * R + tl.arange(0, R)
    r_ok = rows < N
    rows = tl.minimum(rows, N - 1)
    inv = _rms_inv(x_ptr, K, eps, BLOCK_K)
    base = w_ptr + rows.to(tl.int64) * row_stride
    acc = tl.zeros([R], tl.float32)
    for s0 in range(0, K // 256, S):
        acc += _chunk_dot(base, x_ptr, norm_ptr, s0, K // 256, QT, SB_BYTES, True, False, S)
    tl.store(logits_ptr + rows, acc * inv, mask=r_ok)
    if pid == 0:
        offs = tl.arange(0, BLOCK_K)
        ok = offs < K
        xn = tl.load(x_ptr + offs, mask=ok, other=0.0) * inv * tl.load(norm_ptr + offs, mask=ok, other=0.0)
        tl.store(xn_ptr + offs, xn, mask=ok)


@triton.jit
def _route(logits_ptr, n_expert, E_PAD: tl.constexpr, TOP_K: tl.constexpr, K_PAD: tl.constexpr,
           NORM_TOPK: tl.constexpr):
    """Softmax over the experts, top k (ties: lowest id), weights renormalized if NORM_TOPK."""
    e = tl.arange(0, E_PAD)
    logits = tl.load(logits_ptr + e, mask=e < n_expert, other=-float("inf"))
    top = tl.max(logits, 0)
    total = tl.sum(tl.exp(logits - top), 0)
    slots = tl.arange(0, K_PAD)
    ids = tl.zeros([K_PAD], tl.int32)
    weights = tl.zeros([K_PAD], tl.float32)
    for s in tl.static_range(TOP_K):
        best = tl.max(logits, 0)
        idx = tl.min(tl.where(logits == best, e, E_PAD), 0)
        ids = tl.where(slots == s, idx, ids)
        weights = tl.where(slots == s, tl.exp(best - top), weights)
        logits = tl.where(e == idx, -float("inf"), logits)
    if NORM_TOPK:
        weights = weights / tl.sum(weights, 0)
    else:
        weights = weights / total
    return ids, weights


@triton.jit
def moe_gate_up_kernel(logits_ptr, xn_ptr, table_ptr, ids_ptr, wts_ptr, h_ptr, n_expert, n_ff, K: tl.constexpr,
                       row_stride, QT: tl.constexpr, SB_BYTES: tl.constexpr, E_PAD: tl.constexpr,
                       TOP_K: tl.constexpr, K_PAD: tl.constexpr, NORM_TOPK: tl.constexpr,
                       R: tl.constexpr, S: tl.constexpr):
    """h[slot] = silu(gate_e xn) * up_e xn for the slot-th selected expert e.

    Grid (top_k, cdiv(n_ff, R / 2)); R "virtual rows" interleave gate and up rows.
    """
    slot = tl.program_id(0)
    pid = tl.program_id(1)
    ids, weights = _route(logits_ptr, n_expert, E_PAD, TOP_K, K_PAD, NORM_TOPK)
    here = tl.arange(0, K_PAD) == slot
    expert = tl.sum(tl.where(here, ids, 0), 0)
    if pid == 0:
        tl.store(ids_ptr + slot, expert)
        tl.store(wts_ptr + slot, tl.sum(tl.where(here, weights, 0.0), 0))
    entry = table_ptr + expert.to(tl.int64) * 3
    gate = tl.multiple_of(tl.load(entry).to(tl.pointer_type(tl.uint8)), 16)
    up = tl.multiple_of(tl.load(entry + 1).to(tl.pointer_type(tl.uint8)), 16)
    r = tl.arange(0, R)
    row = tl.minimum(pid * (R // 2) + r // 2, n_ff - 1).to(tl.int64)
    base = tl.where(r % 2 == 1, up + row * row_stride, gate + row * row_stride)
    acc = tl.zeros([R], tl.float32)
    for s0 in range(0, K // 256, S):
        acc += _chunk_dot(base, xn_ptr, xn_ptr, s0, K // 256, QT, SB_BYTES, False, False, S)
    g, u = tl.split(tl.reshape(acc, (R // 2, 2)))
    out_rows = pid * (R // 2) + tl.arange(0, R // 2)
    tl.store(h_ptr + slot * n_ff + out_rows, g / (1.0 + tl.exp(-g)) * u, mask=out_rows < n_ff)


@triton.jit
def moe_down_kernel(h_ptr, ids_ptr, wts_ptr, table_ptr, resid_ptr, D, K: tl.constexpr, row_stride,
                    QT: tl.constexpr, SB_BYTES: tl.constexpr, TOP_K: tl.constexpr,
                    K_PAD: tl.constexpr, BN: tl.constexpr, S: tl.constexpr):
    """resid[rows] += sum over slots of weight * (down_e h[slot])[rows].

    Each program owns BN output rows and reads them from all selected experts at once
    (K_PAD * BN virtual rows), so the sum is deterministic.
    """
    r = tl.arange(0, K_PAD * BN)
    slot = r // BN
    row = tl.program_id(0) * BN + r % BN
    ok = (slot < TOP_K) & (row < D)
    slot = tl.minimum(slot, TOP_K - 1)
    expert = tl.load(ids_ptr + slot).to(tl.int64)
    weight = tl.load(wts_ptr + slot)
    down = tl.load(table_ptr + expert * 3 + 2).to(tl.pointer_type(tl.uint8))
    base = down + tl.minimum(row, D - 1).to(tl.int64) * row_stride
    acc = tl.zeros([K_PAD * BN], tl.float32)
    for s0 in range(0, K // 256, S):
        acc += _chunk_dot(base, h_ptr + slot * K, h_ptr, s0, K // 256, QT, SB_BYTES, False, True, S)
    acc = tl.where(ok, acc * weight, 0.0)
    out = tl.sum(tl.reshape(acc, (K_PAD, BN)), 0)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rows_ok = rows < D
    resid = tl.load(resid_ptr + rows, mask=rows_ok, other=0.0)
    tl.store(resid_ptr + rows, resid + out, mask=rows_ok)

"""Prefill (many tokens) kernels.

``qgemm_kernel``: a grouped matrix product that dequantizes its weights in registers, one
256-element super-block at a time, and multiplies on the tensor cores. It serves the
routed experts (tokens sorted into blocks of BM rows per expert, each block reading its
expert's weight through the device address table), optionally fusing silu(gate) * up
(two weights) or the routing weight per row, and dense projections of a few tokens.
``moe_blocks`` builds the sorted layout on the device, without a host sync.

``dequant_kernel``: a whole weight to float16, for dense projections of many tokens
(dequantized once, then a cuBLAS product, instead of once per block of tokens).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from autotune.cache_runtime.triton_tiles import superblock_matrix


@triton.jit
def _superblock_dot(a, w_a, w_b, offset, acc, acc_b, iq_grid, QT: tl.constexpr, GATED: tl.constexpr):
    """acc += a W_a^T over the super-block ``offset`` bytes into the rows at ``w_a`` (BN,)
    (and acc_b += a W_b^T when GATED); ``a``: float16 (BM, 256)."""
    acc = tl.dot(a, superblock_matrix(w_a[None, :] + offset, iq_grid, QT).to(tl.float16), acc)
    if GATED:
        acc_b = tl.dot(a, superblock_matrix(w_b[None, :] + offset, iq_grid, QT).to(tl.float16), acc_b)
    return acc, acc_b


@triton.jit
def qgemm_kernel(a_ptr, a_stride, rows_ptr, block_group_ptr, table_ptr, table_stride, slot_a, slot_b,
                 scale_ptr, out_ptr, out_stride, N, row_stride, a_row_div,
                 K: tl.constexpr, iq_grid, QT: tl.constexpr, SB_BYTES: tl.constexpr, GATED: tl.constexpr,
                 SCALED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """out[row, n] = sum_k a[row // a_row_div, k] * W_g[n, k] for the rows of block pid_m.

    ``a``: float16 (rows, K); ``out``: float32.
    ``rows_ptr``: (blocks * BM,) row ids, -1 for padding; ``block_group_ptr``: (blocks,) the
    group (expert) of each block, -1 for unused blocks; W_g is at table[g * table_stride +
    slot_a] (and slot_b for the up projection when GATED: out = silu(W_a a) * W_b a);
    ``iq_grid``: the grid types' table (``triton_tiles.grid_arg``).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.load(block_group_ptr + pid_m)
    if group >= 0:
        rows = tl.load(rows_ptr + pid_m * BM + tl.arange(0, BM))
        r_ok = rows >= 0
        a_rows = tl.where(r_ok, rows // a_row_div, 0).to(tl.int64)
        n = pid_n * BN + tl.arange(0, BN)
        n_ok = n < N
        n_off = tl.minimum(n, N - 1).to(tl.int64) * row_stride
        entry = table_ptr + group.to(tl.int64) * table_stride
        w_a = tl.multiple_of(tl.load(entry + slot_a).to(tl.pointer_type(tl.uint8)), 16) + n_off
        k = tl.arange(0, 256)
        a_row = a_ptr + a_rows[:, None] * a_stride + k[None, :]
        acc = tl.zeros([BM, BN], tl.float32)
        w_b = w_a
        if GATED:
            w_b = tl.multiple_of(tl.load(entry + slot_b).to(tl.pointer_type(tl.uint8)), 16) + n_off
        acc_b = tl.zeros([BM, BN], tl.float32)
        for sb in range(K // 256):
            acc, acc_b = _superblock_dot(tl.load(a_row + sb * 256), w_a, w_b, sb * SB_BYTES, acc, acc_b,
                                         iq_grid, QT, GATED)
        if K % 256 != 0:  # the last super-block from 256 elements before the end; the inputs
            # of the elements it shares with the one before it masked to 0
            a = tl.load(a_row + (K - 256), mask=(k >= 256 - K % 256)[None, :], other=0.0)
            acc, acc_b = _superblock_dot(a, w_a, w_b, (K - 256) // 32 * (SB_BYTES // 8), acc, acc_b, iq_grid, QT,
                                         GATED)
        if GATED:
            acc = acc / (1.0 + tl.exp(-acc)) * acc_b
        if SCALED:
            acc = acc * tl.load(scale_ptr + tl.where(r_ok, rows, 0))[:, None]
        out = out_ptr + tl.where(r_ok, rows, 0).to(tl.int64)[:, None] * out_stride + n[None, :]
        tl.store(out, acc, mask=r_ok[:, None] & n_ok[None, :])


@triton.jit
def dequant_kernel(w_ptr, out_ptr, N, row_stride, K: tl.constexpr, iq_grid, QT: tl.constexpr,
                   SB_BYTES: tl.constexpr, R: tl.constexpr):
    """out (N, K) float16 = the weight; grid (cdiv(N, R), cdiv(K, 256)). Where K is not whole
    super-blocks, the last program decodes the 256 elements before the row's end and stores
    those the one before it did not."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    sb = tl.program_id(1)
    r_ok = rows < N
    rows = tl.minimum(rows, N - 1).to(tl.int64)
    k = tl.arange(0, 256)
    ok = r_ok[None, :]
    if K % 256 != 0:
        start = tl.minimum(sb * 256, K - 256)
        offset = start // 32 * (SB_BYTES // 8)
        ok = ok & (start + k >= sb * 256)[:, None]
    else:
        start = sb * 256
        offset = sb * SB_BYTES
    blk = (w_ptr + rows * (row_stride // 2) * 2 + offset)[None, :]  # even: 2-byte loads
    w = superblock_matrix(blk, iq_grid, QT)
    tl.store(out_ptr + rows[None, :] * K + start + k[:, None], w.to(tl.float16), mask=ok)


def moe_blocks(ids: torch.Tensor, n_expert: int, bm: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort (token, slot) pairs by expert into blocks of ``bm`` rows, on the device.

    ``ids``: (tokens, k) expert ids. Returns rows (blocks * bm,) int32 holding pair indices
    (token * k + slot) or -1, and the expert of each block (blocks,) int32 or -1; the
    number of blocks is the upper bound cdiv(pairs, bm) + n_expert, so no sync is needed.
    """
    flat = ids.reshape(-1)
    pairs = flat.numel()
    dev = flat.device
    counts = torch.zeros(n_expert, dtype=torch.long, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    blocks = (counts + bm - 1) // bm
    block_end = blocks.cumsum(0)
    first = counts.cumsum(0) - counts
    order = torch.argsort(flat, stable=True)
    expert = flat[order]
    rank = torch.arange(pairs, device=dev) - first[expert]
    n_blocks = triton.cdiv(pairs, bm) + n_expert
    rows = torch.full((n_blocks * bm,), -1, dtype=torch.int32, device=dev)
    rows[(block_end - blocks)[expert] * bm + rank] = order.to(torch.int32)
    group = torch.searchsorted(block_end, torch.arange(n_blocks, device=dev), right=True)
    group = torch.where(group < n_expert, group, -1).to(torch.int32)
    return rows, group

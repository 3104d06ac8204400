"""Decode attention kernels: q/k norm + RoPE + cache store, then split-K flash decoding.

All read the position from the KV cache's device ``pos``, so a captured graph replays
at any position. Loop trip counts are kernel constants (a function of the cache size):
blocks past the current length are skipped by a branch, not by a data-dependent loop.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rope_pairs(ROT: tl.constexpr, NEOX: tl.constexpr):
    """RoPE's pairs over the first ROT dimensions of a head: pair i (its cos/sin column) turns
    dimensions i1 and i2, the two halves (NEOX) or neighbours (GPT-J style)."""
    i = tl.arange(0, ROT // 2)
    if NEOX:
        return i, i, i + ROT // 2
    return i, 2 * i, 2 * i + 1


@triton.jit
def rope_store_kernel(q_ptr, k_ptr, v_ptr, q_norm_ptr, k_norm_ptr, cos_ptr, sin_ptr, pos_ptr,
                      k_cache, v_cache, q_out, n_head, max_ctx, eps,
                      HD: tl.constexpr, ROT: tl.constexpr, QK_NORM: tl.constexpr, NEOX: tl.constexpr):
    """Program h < n_head: rotated (normed) q head h; else kv head h - n_head into the cache.
    RoPE turns the first ROT dimensions of each head (the rest pass as they are).

    ``k_cache``/``v_cache`` point at this layer's (kv_head, max_ctx, HD) float16 slice.
    """
    h = tl.program_id(0)
    pos = tl.load(pos_ptr)
    i, i1, i2 = rope_pairs(ROT, NEOX)
    is_q = h < n_head
    kvh = h - n_head
    src = tl.where(is_q, q_ptr + h * HD, k_ptr + kvh * HD)
    x1 = tl.load(src + i1)
    x2 = tl.load(src + i2)
    if ROT < HD:
        rest = ROT + tl.arange(0, HD - ROT)
        x3 = tl.load(src + rest)
    if QK_NORM:
        squares = tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)
        if ROT < HD:
            squares += tl.sum(x3 * x3, 0)
        inv = 1.0 / tl.sqrt(squares / HD + eps)
        norm = tl.where(is_q, q_norm_ptr, k_norm_ptr)
        x1 = x1 * inv * tl.load(norm + i1)
        x2 = x2 * inv * tl.load(norm + i2)
        if ROT < HD:
            x3 = x3 * inv * tl.load(norm + rest)
    cos = tl.load(cos_ptr + pos * (ROT // 2) + i)
    sin = tl.load(sin_ptr + pos * (ROT // 2) + i)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_q:
        tl.store(q_out + h * HD + i1, o1)
        tl.store(q_out + h * HD + i2, o2)
        if ROT < HD:
            tl.store(q_out + h * HD + rest, x3)
    else:
        row = (kvh * max_ctx + pos).to(tl.int64) * HD
        tl.store(k_cache + row + i1, o1.to(tl.float16))
        tl.store(k_cache + row + i2, o2.to(tl.float16))
        if ROT < HD:
            tl.store(k_cache + row + rest, x3.to(tl.float16))
        d = tl.arange(0, HD)
        tl.store(v_cache + row + d, tl.load(v_ptr + kvh * HD + d).to(tl.float16))


@triton.jit
def attn_partial_kernel(q_ptr, k_cache, v_cache, pos_ptr, m_out, l_out, acc_out, n_head, max_ctx,
                        scale, window, GROUP: tl.constexpr, G_PAD: tl.constexpr, HD: tl.constexpr,
                        BT: tl.constexpr, N_SPLIT: tl.constexpr, N_ITER: tl.constexpr):
    """Grid (kv_heads, N_SPLIT): the GROUP q heads of one kv head over key blocks
    split, split + N_SPLIT, ... up to pos; writes running max, sum and weighted values.
    ``window`` > 0: only the last ``window`` positions (up to pos) are keys."""
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    seq = tl.load(pos_ptr) + 1
    first = tl.where(window > 0, tl.maximum(seq - window, 0), 0)
    g = tl.arange(0, G_PAD)
    g_ok = g < GROUP
    head = kvh * GROUP + tl.minimum(g, GROUP - 1)
    d = tl.arange(0, HD)
    q = tl.load(q_ptr + head[:, None] * HD + d[None, :])
    q = tl.where(g_ok[:, None], q * scale, 0.0).to(tl.float16)
    base = (kvh * max_ctx).to(tl.int64) * HD
    m_i = tl.full([G_PAD], -float("inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, HD], tl.float32)
    for it in range(N_ITER):
        start = (it * N_SPLIT + split) * BT
        if (start < seq) & (start + BT > first):
            t = start + tl.arange(0, BT)
            t_ok = (t < seq) & (t >= first)
            offs = base + tl.minimum(t, seq - 1)[:, None].to(tl.int64) * HD + d[None, :]
            k = tl.load(k_cache + offs)
            s = tl.dot(q, tl.trans(k))
            s = tl.where(t_ok[None, :], s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), tl.load(v_cache + offs))
            m_i = m_new
    out = split * n_head + head
    tl.store(m_out + out, m_i, mask=g_ok)
    tl.store(l_out + out, l_i, mask=g_ok)
    tl.store(acc_out + out[:, None] * HD + d[None, :], acc, mask=g_ok[:, None])


@triton.jit
def attn_combine_kernel(m_ptr, l_ptr, acc_ptr, sinks_ptr, out_ptr, n_head, HD: tl.constexpr,
                        N_SPLIT: tl.constexpr, SINKS: tl.constexpr):
    """Grid (n_head,): merge the splits' partial softmaxes into the head's output; with SINKS,
    the head's sink logit (``sinks_ptr``) is one more term in the softmax's sum."""
    h = tl.program_id(0)
    sp = tl.arange(0, N_SPLIT)
    d = tl.arange(0, HD)
    m = tl.load(m_ptr + sp * n_head + h)
    l = tl.load(l_ptr + sp * n_head + h)
    acc = tl.load(acc_ptr + (sp * n_head + h)[:, None] * HD + d[None, :])
    top = tl.max(m, 0)
    if SINKS:
        sink = tl.load(sinks_ptr + h)
        top = tl.maximum(top, sink)
    w = tl.exp(m - top)  # splits that saw no key: m = -inf, weight 0
    total = tl.sum(w * l, 0)
    if SINKS:
        total += tl.exp(sink - top)
    out = tl.sum(w[:, None] * acc, 0) / total
    tl.store(out_ptr + h * HD + d, out)

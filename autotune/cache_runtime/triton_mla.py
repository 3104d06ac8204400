"""Decode kernels of DeepSeek-V2's latent attention (MLA, ``mla``): latent norm + RoPE + cache
store, then split-K flash decoding over the latent cache (merged by ``attn_combine_kernel``).

A cache row is the RMS-normed latent (LORA elements, also the values) then the rotated RoPE
key (ROT), float16. Both widths must be powers of two of at least 16 (``fits``): 512 + 64 for
every DeepSeek-V2/V3 and Kimi-K2 file, whose row of 576 is loaded as those two tiles.
As in ``triton_attention``, the position is read from the KV cache's device ``pos`` and loop
trip counts are kernel constants, so a captured graph replays at any position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

from autotune.cache_runtime.triton_attention import rope_pairs

if TYPE_CHECKING:
    from autotune.cache_runtime.hparams import ModelConfig


def fits(cfg: ModelConfig) -> bool:
    """Whether the kernels take cfg's latent attention: tiles of kv_lora_rank and of the RoPE
    dims (powers of two, at least tl.dot's 16)."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (cfg.kv_lora_rank, cfg.rotated_dims))


@triton.jit
def latent_rope_store_kernel(q_ptr, kv_ptr, norm_ptr, cos_ptr, sin_ptr, pos_ptr, cache, q_nope_out, q_rope_out,
                             n_head, eps, NOPE: tl.constexpr, NOPE_PAD: tl.constexpr, LORA: tl.constexpr,
                             ROT: tl.constexpr, NEOX: tl.constexpr):
    """Program h < n_head: q's head h (NOPE + ROT float32) into float16 q_nope_out (n_head, NOPE)
    and, rotated, q_rope_out (n_head, ROT). Program n_head: kv's latent (LORA, float32) RMS-normed
    by ``norm_ptr`` and its RoPE key (ROT) rotated, into row pos of ``cache``, this layer's
    (max_ctx, LORA + ROT) float16."""
    h = tl.program_id(0)
    pos = tl.load(pos_ptr)
    i, i1, i2 = rope_pairs(ROT, NEOX)
    if h < n_head:
        src = q_ptr + h * (NOPE + ROT)
        d = tl.arange(0, NOPE_PAD)
        tl.store(q_nope_out + h * NOPE + d, tl.load(src + d, mask=d < NOPE).to(tl.float16), mask=d < NOPE)
        x1 = tl.load(src + NOPE + i1)
        x2 = tl.load(src + NOPE + i2)
        dst = q_rope_out + h * ROT
    else:
        r = tl.arange(0, LORA)
        x = tl.load(kv_ptr + r)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, 0) / LORA + eps)
        row = cache + pos.to(tl.int64) * (LORA + ROT)
        tl.store(row + r, (x * inv * tl.load(norm_ptr + r)).to(tl.float16))
        x1 = tl.load(kv_ptr + LORA + i1)
        x2 = tl.load(kv_ptr + LORA + i2)
        dst = row + LORA
    cos = tl.load(cos_ptr + pos * (ROT // 2) + i)
    sin = tl.load(sin_ptr + pos * (ROT // 2) + i)
    tl.store(dst + i1, (x1 * cos - x2 * sin).to(tl.float16))
    tl.store(dst + i2, (x2 * cos + x1 * sin).to(tl.float16))


@triton.jit
def latent_partial_kernel(q_latent, q_rope, cache, pos_ptr, m_out, l_out, acc_out, n_head, scale,
                          LORA: tl.constexpr, ROT: tl.constexpr, HB: tl.constexpr, BT: tl.constexpr,
                          N_SPLIT: tl.constexpr, N_ITER: tl.constexpr):
    """Grid (N_SPLIT, head blocks): HB heads' float16 queries, absorbed (q_latent: n_head, LORA)
    and rotated (q_rope: n_head, ROT), over the cache's position blocks split, split + N_SPLIT,
    ... up to pos; writes running max, sum and weighted latents as ``attn_partial_kernel``
    does (heads past n_head are computed as the last one and not written)."""
    split = tl.program_id(0)
    g = tl.program_id(1) * HB + tl.arange(0, HB)
    head = tl.minimum(g, n_head - 1)
    seq = tl.load(pos_ptr) + 1
    r = tl.arange(0, LORA)
    e = tl.arange(0, ROT)
    ql = tl.load(q_latent + head[:, None] * LORA + r[None, :])
    qr = tl.load(q_rope + head[:, None] * ROT + e[None, :])
    m_i = tl.full([HB], -float("inf"), tl.float32)
    l_i = tl.zeros([HB], tl.float32)
    acc = tl.zeros([HB, LORA], tl.float32)
    for it in range(N_ITER):
        start = (it * N_SPLIT + split) * BT
        if start < seq:
            t = start + tl.arange(0, BT)
            row = cache + tl.minimum(t, seq - 1)[:, None].to(tl.int64) * (LORA + ROT)
            latent = tl.load(row + r[None, :])
            s = tl.dot(ql, tl.trans(latent)) + tl.dot(qr, tl.trans(tl.load(row + LORA + e[None, :])))
            s = tl.where((t < seq)[None, :], s * scale, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), latent)
            m_i = m_new
    g_ok = g < n_head
    out = split * n_head + head
    tl.store(m_out + out, m_i, mask=g_ok)
    tl.store(l_out + out, l_i, mask=g_ok)
    tl.store(acc_out + out[:, None] * LORA + r[None, :], acc, mask=g_ok[:, None])

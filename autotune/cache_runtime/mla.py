"""DeepSeek-V2's multi-head latent attention (MLA), as llama.cpp's ``deepseek2`` builder runs
it with the absorption optimization: plain PyTorch around ``ops.linear``, on any ops.

Each token's keys and values come from one compressed latent: ``attn_kv_a_mqa`` gives the
latent (``kv_lora_rank``) and a RoPE key (``rope_dims``) shared by every head. The KV cache
keeps exactly that, RMS-normed latent then rotated key, per layer and token: kv_lora_rank +
rope_dims elements, 576 for DeepSeek-V2-Lite and V3, so 1152 bytes in the Triton path's
float16 (2304 in the torch path's float32), where each head's decompressed keys and values
would take n_head x (192 + 128) elements (10 KiB in float16 for V2-Lite's 16 heads, 80 KiB
for V3's 128). llama.cpp keeps the same 576 elements (float16 by default) for a file with the
split ``attn_k_b``/``attn_v_b``, and the decompressed per-head K and V for older files.

Attention is then multi-query over it: each head's no-RoPE query is absorbed into the
latent's space through ``wk_b``, its RoPE query is rotated over the last ``rope_dims`` of the head, the scores are scaled by ``kq_scale`` (YaRN's
mscale squared), and the weighted latent goes back to each head's values through ``wv_b``.
Older files' single ``attn_kv_b`` holds both matrices (the same arithmetic as llama.cpp's
per-head decompression there, in another order).

A prefill reads its position from the host (``start``); a decode step reads it from the device,
so the step is captured as a CUDA graph as every family's is. The projections around it are
``ops.linear``; the part between them (the cache store, the absorbed query, the scores and
the weighted latents) is ``Ops.latent_attend``: ``latent_attend`` here, or for a decode step
on the Triton ops a few fused kernels (``triton_mla``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from autotune.cache_runtime.torch_ops import rmsnorm

if TYPE_CHECKING:
    from autotune.cache_runtime.hparams import ModelConfig
    from autotune.cache_runtime.ops import Ops
    from autotune.cache_runtime.weights import LayerWeights


def kq_scale(cfg: ModelConfig) -> float:
    """The builder's score scale: YaRN's mscale squared over sqrt(head_dim)."""
    scaling = cfg.rope_scaling
    log_scale = math.log(1.0 / scaling.freq_scale)
    attn_factor = scaling.attn_factor * (1.0 + 0.1 * log_scale)  # the file's, before the context's adjustment
    mscale = attn_factor * (1.0 + 0.1 * scaling.yarn_log_mul * log_scale)
    return mscale * mscale / math.sqrt(cfg.head_dim)


def absorbed(ops: Ops, il: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer il's wk_b (n_head, kv_lora_rank, no-RoPE dims) and wv_b (n_head, v dims,
    kv_lora_rank), from whichever form the file has, dequantized once into the KV cache's
    dtype and kept in ``ops.absorbed`` (a decode step then reads them, not the quantized rows;
    ``budget`` counts the copy)."""
    if il not in ops.absorbed:
        cfg, lw, dtype = ops.cfg, ops.w.layers[il], ops.kv_cache.k.dtype
        if lw.wkv_b is None:
            wk_b, wv_b = lw.wk_b.dequantize(), lw.wv_b.dequantize()
        else:
            nope = cfg.head_dim - cfg.rotated_dims
            kv_b = lw.wkv_b.dequantize().view(cfg.n_head, nope + cfg.v_dim, cfg.kv_lora_rank)
            wk_b, wv_b = kv_b[:, :nope].transpose(1, 2), kv_b[:, nope:]
        ops.absorbed[il] = wk_b.to(dtype).contiguous(), wv_b.to(dtype).contiguous()
    return ops.absorbed[il]


def queries(ops: Ops, x: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
    """Every head's query of the normed x (tokens, n_embd): (tokens, n_head, head_dim)."""
    cfg = ops.cfg
    if lw.wq is not None:
        q = ops.linear(x, lw.wq)
    else:
        q = ops.linear(rmsnorm(ops.linear(x, lw.wq_a), lw.q_a_norm, cfg.rms_eps), lw.wq_b)
    return q.view(x.shape[0], cfg.n_head, cfg.head_dim)


def mla_attention(ops: Ops, h: torch.Tensor, il: int, start: int) -> torch.Tensor:
    """h + layer il's latent attention over the KV cache (which keeps the new tokens' latents).
    One token reads its position from the device (``KVCache.pos``), so a decode step over it
    can be captured as a CUDA graph; several (a prefill) run at ``start``."""
    cfg, lw = ops.cfg, ops.w.layers[il]
    x = rmsnorm(h, lw.attn_norm, cfg.rms_eps)
    out = ops.latent_attend(queries(ops, x, lw), ops.linear(x, lw.wkv_a_mqa), il, start)
    _, wv_b = absorbed(ops, il)
    heads = torch.einsum("thr,hvr->thv", out.to(wv_b.dtype), wv_b).float()  # (tokens, heads, v dims)
    return h + ops.linear(heads.reshape(h.shape[0], cfg.attn_out_dim), lw.wo)


def latent_attend(ops: Ops, q: torch.Tensor, kv: torch.Tensor, il: int, start: int) -> torch.Tensor:
    """``Ops.latent_attend`` in torch: the latent RMS-normed and the key rotated into the cache,
    then q's heads, absorbed, over every position up to theirs (a single token's at ``pos``)."""
    cfg, lw = ops.cfg, ops.w.layers[il]
    n, lora = q.shape[0], cfg.kv_lora_rank
    nope = cfg.head_dim - cfg.rotated_dims
    latent = rmsnorm(kv[:, :lora], lw.kv_a_norm, cfg.rms_eps)
    pos = ops.kv_cache.pos
    rotate = (lambda t: ops.rope.apply_at(t, pos)) if n == 1 else (lambda t: ops.rope.apply(t, start))
    key = torch.cat([latent[:, None], rotate(kv[:, None, lora:])], dim=-1)
    if n == 1:
        ops.kv_cache.store_keys_at(il, key)
    else:
        ops.kv_cache.store_keys(il, start, key)

    wk_b, _ = absorbed(ops, il)
    cache = ops.kv_cache.k[il, 0]
    q_latent = torch.einsum("thd,hrd->thr", q[..., :nope].to(cache.dtype), wk_b)
    q = torch.cat([q_latent, rotate(q[..., nope:]).to(cache.dtype)], dim=-1)  # (tokens, heads, lora + rope)
    if n == 1:
        return _attend_one(cfg, q[0], cache, ops.kv_cache.positions > pos)
    return _attend_prefill(cfg, q, cache[: start + n], start)


def _attend_one(cfg: ModelConfig, q: torch.Tensor, cache: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
    """One token's heads q (n_head, lora + rope) over the whole cache (max_ctx, lora + rope),
    the positions ``ahead`` (max_ctx,) of it masked: the weighted latents (1, n_head, lora)."""
    scores = (q @ cache.T).float() * kq_scale(cfg)
    scores = scores.masked_fill(ahead, float("-inf"))
    return (torch.softmax(scores, dim=-1).to(cache.dtype) @ cache[:, : cfg.kv_lora_rank])[None]


def _attend_prefill(cfg: ModelConfig, q: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens' heads q (tokens, n_head, lora + rope) at start, start + 1, ... over the cache up
    to the last of them, causally: the weighted latents (tokens, n_head, lora)."""
    n, end = q.shape[0], cache.shape[0]
    keys = cache[None, None].expand(1, cfg.n_head, end, cache.shape[-1])
    values = keys[..., : cfg.kv_lora_rank]
    qh = q.transpose(0, 1)[None]
    if start == 0:
        out = F.scaled_dot_product_attention(qh, keys, values, is_causal=True, scale=kq_scale(cfg))
    else:
        positions = torch.arange(end, device=q.device)
        mask = positions[None, :] <= (start + torch.arange(n, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask, scale=kq_scale(cfg))
    return out[0].transpose(0, 1)

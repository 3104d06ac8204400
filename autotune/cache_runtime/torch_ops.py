"""The model's blocks in plain PyTorch: dequantize the weights, then matmul.

This is the readable definition of the blocks and the CPU path (slow, correct). The Triton
path (``triton_ops``) implements the same contract (``ops.Ops``), block for block, with
fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autotune.cache_runtime.ops import Ops
from autotune.cache_runtime.routing import route_layer
from autotune.cache_runtime.weights import QTensor


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def with_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x if bias is None else x + bias


# gpt-oss's clamped SwiGLU (llama.cpp's LLM_FFN_SWIGLU_OAI_MOE constants)
OAI_ALPHA, OAI_LIMIT = 1.702, 7.0


def glu(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """The gated activation: silu(gate) * up, or "swiglu_oai": the gate clamped above and the
    up clamped both ways at OAI_LIMIT, gate * sigmoid(OAI_ALPHA * gate) * (up + 1)."""
    if act == "silu":
        return F.silu(gate) * up
    gate, up = gate.clamp(max=OAI_LIMIT), up.clamp(-OAI_LIMIT, OAI_LIMIT)
    return gate * torch.sigmoid(OAI_ALPHA * gate) * (up + 1)


def expert_bias(bias: torch.Tensor | None, ids: torch.Tensor | int) -> torch.Tensor | None:
    """The selected experts' rows of a per-expert bias stack (None where the layer has none)."""
    return None if bias is None else bias[ids]


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                   sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention (batch, heads, queries, dims) over the keys ``visible`` (queries, keys)
    marks, with each head's sink logit (heads,) as one more term in its softmax's sum (no
    value): the sink is one more key, in one more dimension, that only the sink key has and
    every query sets to 1, so its score is the sink whatever the query."""
    scale = q.shape[-1] ** -0.5
    if sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)
    batch, heads, n, _ = q.shape
    pad = 8  # one dimension, padded to keep the fused kernels' alignment
    q = torch.cat([q, q.new_zeros(batch, heads, n, pad)], dim=-1)
    q[..., -pad] = 1.0
    k = torch.cat([k, k.new_zeros(*k.shape[:-1], pad)], dim=-1)
    sink_key = k.new_zeros(batch, heads, 1, k.shape[-1])
    sink_key[..., -pad] = sinks.to(k.dtype)[None, :, None] / scale
    k = torch.cat([k, sink_key], dim=-2)
    v = torch.cat([v, v.new_zeros(*v.shape[:-2], 1, v.shape[-1])], dim=-2)
    visible = torch.cat([visible, visible.new_ones(n, 1)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)


class TorchOps(Ops):
    """The blocks as dequantize-then-matmul; experts are read where ``hooks.resolve`` says."""

    # -- building blocks the Triton path replaces ---------------------------------------

    def linear(self, x: torch.Tensor, w: QTensor) -> torch.Tensor:
        """x @ W^T for a quantized W (rows = outputs)."""
        return x @ w.dequantize().T

    def experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
        """Sum over each token's selected experts of MoE layer m (``ModelConfig.moe_layer``) of
        weight * ``expert_ffn``."""
        return self.some_experts(x, weights, ids, m, None)

    def some_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, m: int,
                     on_device: torch.Tensor | None) -> torch.Tensor:
        """``experts`` over the selections ``on_device`` (tokens, k) bool marks (None: all of them)."""
        out = torch.zeros(x.shape[0], self.cfg.n_embd, dtype=x.dtype, device=x.device)
        chosen = ids if on_device is None else ids[on_device]
        for e in chosen.unique().tolist():
            token, slot = ((ids == e) if on_device is None else (ids == e) & on_device).nonzero(as_tuple=True)
            y = self.expert_ffn(x[token], m, e)
            out.index_add_(0, token, weights[token, slot, None] * y)
        return out

    def expert_ffn(self, x: torch.Tensor, m: int, e: int) -> torch.Tensor:
        """Expert e of MoE layer m on x: ``ffn`` with the model's activation and the expert's
        gate, up and down biases where the layer has them."""
        gate, up, down = self.expert(m, e)
        lw = self.w.moe_layers[m]
        hidden = glu(with_bias(self.linear(x, gate), expert_bias(lw.gate_exps_b, e)),
                     with_bias(self.linear(x, up), expert_bias(lw.up_exps_b, e)), self.cfg.expert_act)
        return with_bias(self.linear(hidden, down), expert_bias(lw.down_exps_b, e))

    def expert(self, m: int, e: int) -> tuple[QTensor, QTensor, QTensor]:
        """Expert e's gate, up and down matrices (MoE layer m), wherever the expert cache keeps them."""
        lw = self.w.moe_layers[m]
        return self.hooks.resolve(m, e, (lw.gate_exps, lw.up_exps, lw.down_exps))

    def routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
        """``experts``, with the layer's missing experts staged around it when the cache bypasses,
        or the device's share only where the cache hands the misses to the CPU (``hooks.offload``;
        the caller adds the CPU's share)."""
        hooks = self.hooks
        on_device = hooks.offload(m, x, ids, weights)
        if on_device is not None:
            return self.some_experts(x, weights, ids, m, on_device)
        if not hooks.bypasses(x.shape[0]):
            return self.experts(x, weights, ids, m)
        hooks.stage_layer(m)
        try:
            return self.experts(x, weights, ids, m)
        finally:
            hooks.unstage_layer(m)

    # -- the blocks ----------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.w.token_embd
        return QTensor(emb.data[tokens], emb.qtype, emb.cols).dequantize()

    def attn_in(self, h: torch.Tensor, il: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RMSNorm, then the q, k, v projections (plus their biases where the layer has them)."""
        lw = self.w.layers[il]
        x = rmsnorm(h, lw.attn_norm, self.cfg.rms_eps)
        q, k, v = self.linear(x, lw.wq), self.linear(x, lw.wk), self.linear(x, lw.wv)
        return with_bias(q, lw.bq), with_bias(k, lw.bk), with_bias(v, lw.bv)

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Per-head q/k norm, RoPE, and k, v into the KV cache; the rotated q (tokens, heads, head_dim)."""
        cfg, lw = self.cfg, self.w.layers[il]
        n = q.shape[0]
        q = q.view(n, cfg.n_head, cfg.head_dim)
        k = k.view(n, cfg.n_head_kv, cfg.head_dim)
        if cfg.qk_norm:
            q = rmsnorm(q, lw.q_norm, cfg.rms_eps)
            k = rmsnorm(k, lw.k_norm, cfg.rms_eps)
        q, k = self.rope.apply(q, start), self.rope.apply(k, start)
        self.kv_cache.store(il, start, k, v.view(n, cfg.n_head_kv, cfg.head_dim))
        return q

    def attend(self, q: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Causal attention of q (positions start...) over the KV cache: (tokens, n_head * head_dim)."""
        n = q.shape[0]
        end = start + n
        group = self.cfg.n_head // self.cfg.n_head_kv
        # whole heads rather than enable_gqa, which keeps SDPA off its flash kernel
        k = self.kv_cache.k[il, :, :end].repeat_interleave(group, dim=0)
        v = self.kv_cache.v[il, :, :end].repeat_interleave(group, dim=0)
        # 4-D (batch of one): SDPA's fused kernels (flash, memory-efficient) take nothing else,
        # and its fallback materializes every score (a GiB for 2048 tokens)
        qh, k, v = q.transpose(0, 1).to(k.dtype)[None], k[None], v[None]
        window, sinks = self.cfg.window(il), self.w.layers[il].attn_sinks
        if start == 0 and not window and sinks is None:
            out = F.scaled_dot_product_attention(qh, k, v, is_causal=True)
        else:
            keys = torch.arange(end, device=q.device)
            queries = (start + torch.arange(n, device=q.device))[:, None]
            mask = keys[None, :] <= queries
            if window:  # llama.cpp's standard window: a query sees the last ``window`` positions
                mask &= keys[None, :] > queries - window
            out = sink_attention(qh, k, v, mask, sinks)
        return out[0].transpose(0, 1).reshape(n, self.cfg.q_dim).float()

    def latent_attend(self, q: torch.Tensor, kv: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Latent attention as ``mla.latent_attend`` defines it."""
        from autotune.cache_runtime.mla import latent_attend  # here: mla builds on this module

        return latent_attend(self, q, kv, il, start)

    def out_proj(self, a: torch.Tensor, il: int, h: torch.Tensor) -> torch.Tensor:
        """h + attention output projection (plus its bias where the layer has one)."""
        lw = self.w.layers[il]
        return h + with_bias(self.linear(a, lw.wo), lw.bo)

    def moe(self, h: torch.Tensor, il: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h + the routed experts of RMSNorm(h) (+ the shared expert where the layer has one);
        and the selected ids (tokens, k)."""
        lw, m = self.w.layers[il], self.cfg.moe_layer(il)
        x = rmsnorm(h, lw.ffn_norm, self.cfg.rms_eps)
        logits = with_bias(self.linear(x, lw.router), lw.router_b)
        weights, ids = route_layer(logits, self.cfg, lw.exp_probs_b)
        self.routing.after_route(m, logits, weights, ids)
        self.hooks.after_router(m, h)
        out = h + self.routed(x, weights, ids, m)
        if lw.gate_shexp is not None:
            out = out + self.shared_expert(x, il)
        self.hooks.add_offloaded(m, out)
        return out, ids

    def ffn(self, x: torch.Tensor, gate: QTensor, up: QTensor, down: QTensor) -> torch.Tensor:
        """down(silu(gate x) * up x): a shared expert's or a dense layer's FFN."""
        return self.linear(glu(self.linear(x, gate), self.linear(x, up), "silu"), down)

    def shared_expert(self, x: torch.Tensor, il: int) -> torch.Tensor:
        """Layer il's shared expert on the normalized x, times sigmoid(gate_inp_shexp . x)
        where the layer has that gate (Qwen2-MoE)."""
        lw = self.w.layers[il]
        y = self.ffn(x, lw.gate_shexp, lw.up_shexp, lw.down_shexp)
        if lw.gate_inp_shexp is not None:
            y = y * torch.sigmoid(x @ lw.gate_inp_shexp)[:, None]
        return y

    def dense_ffn(self, h: torch.Tensor, il: int) -> torch.Tensor:
        """h + the dense FFN of RMSNorm(h) (a leading dense layer)."""
        lw = self.w.layers[il]
        return h + self.ffn(rmsnorm(h, lw.ffn_norm, self.cfg.rms_eps), lw.ffn_gate, lw.ffn_up, lw.ffn_down)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (tokens, vocab)."""
        return self.linear(rmsnorm(h, self.w.output_norm, self.cfg.rms_eps), self.w.output)

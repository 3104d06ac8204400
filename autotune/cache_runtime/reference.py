"""A plain reference forward pass: dequantize everything (with ``gguf.quants``), then matmul.

No KV cache, no fused kernels, float64 throughout: every position's logits from the whole
token sequence at once. It shares nothing with the runtime but the header reading
(``read_config``), so the tests that compare the two check the runtime's dequantizers,
cache, kernels and routing independently. Meant for tiny models on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf import quants as gguf_quants

from autotune.cache_runtime.hparams import ModelConfig, read_config


def _dequantized(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for t in GGUFReader(path, "r").tensors:
        values = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type)
        shape = [int(x) for x in reversed(t.shape)]  # numpy order: contiguous dimension last
        tensors[t.name] = torch.from_numpy(values.astype(np.float64).reshape(shape))
    return tensors


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """x: (tokens, heads, head_dim)."""
    half = cfg.head_dim // 2
    freqs = cfg.rope_base ** (-2.0 * torch.arange(half, dtype=torch.float64) / cfg.head_dim)
    angle = positions.double()[:, None, None] * freqs
    cos, sin = torch.cos(angle), torch.sin(angle)
    if cfg.rope_neox:
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def reference_logits(path: str | Path, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (tokens, vocab) at every position, and the selected experts (tokens, layers, k)."""
    path = Path(path)
    cfg = read_config(path)
    w = _dequantized(path)
    n = len(tokens)
    positions = torch.arange(n)
    h = w["token_embd.weight"][torch.tensor(tokens)]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    group = cfg.n_head // cfg.n_head_kv
    selected = torch.zeros(n, cfg.n_layers, cfg.n_expert_used, dtype=torch.long)
    for il in range(cfg.n_layers):
        p = lambda name: w[f"blk.{il}.{name}.weight"]  # noqa: E731
        x = _rmsnorm(h, p("attn_norm"), cfg.rms_eps)
        q = (x @ p("attn_q").T).view(n, cfg.n_head, cfg.head_dim)
        k = (x @ p("attn_k").T).view(n, cfg.n_head_kv, cfg.head_dim)
        v = (x @ p("attn_v").T).view(n, cfg.n_head_kv, cfg.head_dim)
        if cfg.qk_norm:
            q = _rmsnorm(q, p("attn_q_norm"), cfg.rms_eps)
            k = _rmsnorm(k, p("attn_k_norm"), cfg.rms_eps)
        q, k = _rope(q, positions, cfg), _rope(k, positions, cfg)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / cfg.head_dim**0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, cfg.q_dim)
        h = h + attn @ p("attn_output").T

        x = _rmsnorm(h, p("ffn_norm"), cfg.rms_eps)
        probs = (x @ p("ffn_gate_inp").T).softmax(-1)
        top_w, top_i = probs.topk(cfg.n_expert_used, dim=-1)
        if cfg.norm_topk:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        selected[:, il] = top_i
        out = torch.zeros_like(h)
        for t in range(n):
            for weight, e in zip(top_w[t], top_i[t]):
                gate = p("ffn_gate_exps")[e] @ x[t]
                up = p("ffn_up_exps")[e] @ x[t]
                out[t] += weight * (p("ffn_down_exps")[e] @ (torch.nn.functional.silu(gate) * up))
        h = h + out
    output = w.get("output.weight", w["token_embd.weight"])
    return _rmsnorm(h, w["output_norm.weight"], cfg.rms_eps) @ output.T, selected

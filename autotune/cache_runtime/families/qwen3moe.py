"""Qwen3-MoE (``qwen3moe``): pre-norm attention with per-head q/k RMSNorm and NeoX RoPE, then
routed experts (softmax top-k, renormalized), no shared expert."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.cache_runtime.families.family import ArchTraits, Family
from autotune.cache_runtime.families.blocks import attention, by_token

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.ops import Ops


def forward(ops: Ops, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``tokens`` (at positions start, start + 1, ...) through the model.

    Returns the last token's logits (vocab,) and the selected experts (tokens, layers, k).
    The KV cache keeps every token's keys and values for the next call.
    """
    h = ops.embed(tokens)
    selected = []
    for il in range(ops.cfg.n_layers):
        h = attention(ops, h, il, start)
        h, ids = ops.moe(h, il)
        selected.append(ids)
    return ops.head(h[-1:])[0], by_token(selected)


FAMILY = Family("qwen3moe", ArchTraits(rope_neox=True, norm_topk=True, qk_norm=True), forward)

"""Blocks the families share, written against ``ops.Ops`` (which does the arithmetic)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.ops import Ops


def attention(ops: Ops, h: torch.Tensor, il: int, start: int) -> torch.Tensor:
    """h + layer il's self-attention over the KV cache (which keeps the new keys and values)."""
    q, k, v = ops.attn_in(h, il)
    q = ops.rope_store(q, k, v, il, start)
    return ops.out_proj(ops.attend(q, il, start), il, h)


def by_token(selected: list[torch.Tensor]) -> torch.Tensor:
    """Each layer's selected experts (tokens, k) as one (tokens, layers, k) tensor."""
    import torch  # here, not at import: the families' registry is read without torch

    return torch.stack(selected, dim=1)

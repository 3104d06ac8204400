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


def routed_moe_forward(ops: Ops, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass of a decoder whose every layer is pre-norm attention then routed experts
    (softmax top-k, no shared expert); the family's traits (rope style, q/k norm, renormalized
    top-k) are in ``ops.cfg``. Runs ``tokens`` (at positions start, start + 1, ...).

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

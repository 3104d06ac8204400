"""Blocks the families share, written against ``ops.Ops`` (which does the arithmetic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.ops import Ops

# (ops, h, il, start) -> h + layer il's attention
AttentionBlock = Callable[["Ops", "torch.Tensor", int, int], "torch.Tensor"]


def attention(ops: Ops, h: torch.Tensor, il: int, start: int) -> torch.Tensor:
    """h + layer il's self-attention over the KV cache (which keeps the new keys and values)."""
    q, k, v = ops.attn_in(h, il)
    q = ops.rope_store(q, k, v, il, start)
    return ops.out_proj(ops.attend(q, il, start), il, h)


def by_token(selected: list[torch.Tensor]) -> torch.Tensor:
    """Each layer's selected experts (tokens, k) as one (tokens, layers, k) tensor."""
    import torch  # here, not at import: the families' registry is read without torch

    return torch.stack(selected, dim=1)


def ffn_layer(ops: Ops, h: torch.Tensor, il: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layer il's FFN half: the dense FFN of a leading dense layer (no selection: None), else
    the routed experts (with the layer's shared expert) and their selected ids."""
    if il < ops.cfg.n_dense_lead:
        return ops.dense_ffn(h, il), None
    return ops.moe(h, il)


def routed_moe_forward(ops: Ops, tokens: torch.Tensor, start: int,
                       attention_block: AttentionBlock = attention) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass of a decoder whose every layer is pre-norm attention (``attention_block``,
    by default the q/k/v ``attention``) then an FFN: a
    dense one for the ``cfg.n_dense_lead`` leading layers, routed experts (and a shared
    expert where the layer has one) for the others. The family's traits (rope style and
    dimensions, q/k norm, the router's gate, renormalized top-k) are in ``ops.cfg``. Runs
    ``tokens`` (at positions start, start + 1, ...).

    Returns the last token's logits (vocab,) and the selected experts (tokens, MoE layers, k).
    The KV cache keeps every token's keys and values for the next call.
    """
    h = ops.embed(tokens)
    selected = []
    for il in range(ops.cfg.n_layers):
        h = attention_block(ops, h, il, start)
        h, ids = ffn_layer(ops, h, il)
        if ids is not None:
            selected.append(ids)
    return ops.head(h[-1:])[0], by_token(selected)

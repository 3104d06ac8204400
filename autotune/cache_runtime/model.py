"""The forward pass: embed, then per layer attention and routed experts, then the head.

Written once against the blocks' contract (``TorchOps``); whichever ops object is given
(plain PyTorch or fused Triton kernels) does the arithmetic.
"""

from __future__ import annotations

import torch

from autotune.cache_runtime.torch_ops import TorchOps


def forward(ops: TorchOps, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``tokens`` (at positions start, start + 1, ...) through the model.

    Returns the last token's logits (vocab,) and the selected experts (tokens, layers, k).
    The KV cache keeps every token's keys and values for the next call.
    """
    h = ops.embed(tokens)
    selected = []
    for il in range(ops.cfg.n_layers):
        q, k, v = ops.attn_in(h, il)
        q = ops.rope_store(q, k, v, il, start)
        h = ops.out_proj(ops.attend(q, il, start), il, h)
        h, ids = ops.moe(h, il)
        selected.append(ids)
    return ops.head(h[-1:])[0], torch.stack(selected, dim=1)

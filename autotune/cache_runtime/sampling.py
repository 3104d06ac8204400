"""Choosing the next token from logits: greedy, or temperature sampling by the Gumbel-max trick.

Both run on the device with no host sync, so they can sit inside a captured decode graph.
"""

from __future__ import annotations

import torch


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token, shape (1,)."""
    return logits.argmax(-1, keepdim=True)


def gumbel_sample(logits: torch.Tensor, inv_temperature: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A token drawn from softmax(logits / T), shape (1,); ``inv_temperature`` is 1/T, shape (1,)."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(min=1e-20)
    return (logits.float() * inv_temperature - torch.log(-torch.log(u))).argmax(-1, keepdim=True)

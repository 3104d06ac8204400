"""DeepSeek-V2 / V2-Lite / V3 / R1 and Kimi-K2 (``deepseek2``): pre-norm multi-head latent
attention (``mla``: q directly or through a low-rank projection, one compressed KV latent
plus a shared RoPE key, normal (not NeoX) RoPE over the last ``rope.dimension_count`` dims of
each head, YaRN with DeepSeek's mscale), then an FFN: dense for the first
``leading_dense_block_count`` layers, else routed experts (softmax for V2, sigmoid with the
expert-bias correction ``exp_probs_b`` for V3, top k within the best expert groups where the
file has them, renormalized where ``expert_weights_norm`` says, times
``expert_weights_scale``) plus an ungated shared expert of ``expert_shared_count`` experts'
width. NextN layers are skipped, as llama.cpp's decoder skips them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.ops import Ops


def forward(ops: Ops, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``routed_moe_forward`` with latent attention (imported here: the registry is torch-free)."""
    from autotune.cache_runtime.mla import mla_attention

    return routed_moe_forward(ops, tokens, start, mla_attention)


FAMILY = Family("deepseek2", ArchTraits(rope_neox=False, norm_topk=False, qk_norm=False, mla=True), forward)

"""Mixtral-style MoE files under llama.cpp's ``llama`` architecture (its builder with
``n_expert > 0``): pre-norm attention with normal (not NeoX) RoPE and no q/k norm, then routed
experts (softmax top-k, always renormalized), no shared expert. The same forward pass as
``qwen3moe``: the two differ only by traits. The experts' FFN width is the file's
``llama.feed_forward_length``."""

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

FAMILY = Family("llama", ArchTraits(rope_neox=False, norm_topk=True, qk_norm=False,
                                    expert_ff_key="feed_forward_length"), routed_moe_forward)

"""Qwen3-MoE (``qwen3moe``): pre-norm attention with per-head q/k RMSNorm and NeoX RoPE, then
routed experts (softmax top-k, renormalized), no shared expert."""

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

FAMILY = Family("qwen3moe", ArchTraits(rope_neox=True, norm_topk=True, qk_norm=True), routed_moe_forward)

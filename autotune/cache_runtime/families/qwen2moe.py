"""Qwen2-MoE (``qwen2moe``): known, not runnable yet."""

from autotune.cache_runtime.families.family import ArchTraits, PlannedFamily

FAMILY = PlannedFamily("qwen2moe", ArchTraits(rope_neox=True, norm_topk=False, qk_norm=False),
                       missing="shared experts and attention biases")

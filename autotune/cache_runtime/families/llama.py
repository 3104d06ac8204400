"""Mixtral-style MoE files under llama.cpp's ``llama`` architecture: known, not runnable yet."""

from autotune.cache_runtime.families.family import ArchTraits, PlannedFamily

FAMILY = PlannedFamily("llama", ArchTraits(rope_neox=False, norm_topk=True, qk_norm=False),
                       missing="mixtral-style llama files (untested)")

"""OLMoE (``olmoe``): known, not runnable yet."""

from autotune.cache_runtime.families.family import ArchTraits, PlannedFamily

FAMILY = PlannedFamily("olmoe", ArchTraits(rope_neox=True, norm_topk=False, qk_norm=False),
                       missing="q/k norm over the whole projection")

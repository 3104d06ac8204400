"""Published routing statistics of a real MoE model, and the same targets for other shapes.

Source: Qwen3-30B-A3B (128 experts, top-8), 4-bit, 25 prompts, 3,225 decode tokens (the
``moe-trace`` project's findings, quoted in issue 30). Scaling to a shape with fewer experts:

- top-16 of 128 is the top eighth of a layer's experts, so a shape with n experts is scored
  on its top n/8;
- the LRU points 8/16/32/64 are, for 128 experts top-8, one and two tokens' selections (k
  and 2k slots: recency), half the experts (n/2: coverage) and the geometric mean of 2k and
  n/2 between them. A shape keeps those definitions (for 32 experts, top-4: 4, 8, 11, 16).
  Scaling all four by n alone cannot be met there (2 slots hold half a token's selections),
  nor by k alone (8k = 32 slots is every expert); equal ratios from k to n/2 (4, 6, 10, 16)
  ask 65% at 1.5 tokens' worth, which needs an expert skipped for a token to return more
  often than one just used (measured: 57%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REFERENCE_EXPERTS, REFERENCE_USED = 128, 8
TOP_SHARE_BAND = (0.41, 0.66)  # of selections to the top 16 of 128, per layer (layer 0 .. 18)
ADJACENT_OVERLAP = (0.37, 0.42)  # prefill .. decode
LRU_HIT = (0.424, 0.647, 0.810, 0.918)  # per-layer LRU at 8 / 16 / 32 / 64 slots
MIN_EXPERTS = 32  # below it the scaled targets degenerate: at 16 experts, top-4, "the top eighth
# takes half the selections" asks every token for the same two experts, and the LRU points repeat


@dataclass(frozen=True)
class RoutingTargets:
    """The published figures, at one shape's expert count and top-k."""

    n_expert: int
    n_expert_used: int

    def __post_init__(self) -> None:
        if self.n_expert < MIN_EXPERTS:
            raise ValueError(f"the published figures do not scale to {self.n_expert} experts (fewer than {MIN_EXPERTS})")

    @property
    def top(self) -> int:
        """How many of a layer's experts the top-share figure counts (16 of 128)."""
        return max(1, round(self.n_expert * 16 / REFERENCE_EXPERTS))

    @property
    def lru_slots(self) -> tuple[int, ...]:
        """Slots per layer at which ``LRU_HIT`` applies (8/16/32/64 for 128 experts, top-8)."""
        two_tokens, half = 2 * self.n_expert_used, self.n_expert // 2
        return (self.n_expert_used, two_tokens, round(math.sqrt(two_tokens * half)), half)

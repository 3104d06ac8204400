import numpy as np
import pytest

from autotune.routing_stats import adjacent_overlap, lru_hit_rates, top_share
from autotune.synth.real_routing import RoutingTargets

# one layer, top-2 of 6 experts, five tokens
TRACE = np.array([[[0, 1], [1, 2], [0, 1], [3, 4], [0, 5]]])


def test_top_share_counts_the_most_selected_experts():
    # counts: 0:3, 1:3, 2:1, 3:1, 4:1, 5:1 of 10
    assert top_share(TRACE, 6, 2).tolist() == [pytest.approx(0.6)]
    assert top_share(TRACE, 6, 6).tolist() == [pytest.approx(1.0)]


def test_adjacent_overlap_is_the_share_of_selections_the_previous_token_made():
    # shared with the previous token: 1, then 1, then 0, then 0 of 2 each
    assert adjacent_overlap(TRACE, 6) == pytest.approx(2 / 8)


def test_lru_hits_the_most_recently_used_experts():
    # before each token (most recent first, ties lower id): [0 1], [1 2 0], [3 4 0 1 2];
    # token 3's experts were never used; the first token is not scored
    rates = lru_hit_rates(TRACE, 6, [1, 2, 3, 5])
    assert rates == {1: pytest.approx(1 / 8), 2: pytest.approx(2 / 8), 3: pytest.approx(4 / 8),
                     5: pytest.approx(4 / 8)}


def test_targets_scale_to_the_expert_count_and_top_k():
    assert RoutingTargets(128, 8).top == 16 and RoutingTargets(128, 8).lru_slots == (8, 16, 32, 64)
    assert RoutingTargets(32, 4).top == 4 and RoutingTargets(32, 4).lru_slots == (4, 8, 11, 16)

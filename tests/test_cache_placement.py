"""Placement rules (initial placement, decayed counts, LRU/LFU scores, swaps) and persistence."""

from __future__ import annotations

import re

import numpy as np
import pytest

from autotune.cache_runtime.learned import (counts_path, load_counts, read_placement, save_counts, seed_counts,
                                            write_placement)
from autotune.errors import AutotuneError
from autotune.cache_runtime.placement import RoutingStats, initial_placement, pick_victim, plan_admissions, plan_swaps


def test_initial_placement_from_counts_or_first_come() -> None:
    counts = np.array([[1, 9, 5, 9], [0, 0, 0, 0]])
    assert initial_placement([2, 3], 4, counts) == [[1, 3], [0, 1, 2]]  # ties: lower id
    assert initial_placement([1, 0], 4, None) == [[0], []]


def test_routing_stats_count_decay_and_remember_last_use() -> None:
    stats = RoutingStats(2, 4)
    stats.observe(np.array([[0, 1], [2, 3]]))
    stats.observe(np.array([[1, 2], [3, 0]]))
    np.testing.assert_array_equal(stats.decayed, [[1, 2, 1, 0], [1, 0, 1, 2]])
    np.testing.assert_array_equal(stats.last_use, [[0, 1, 1, -1], [1, -1, 0, 1]])
    stats.decay(0.5)
    np.testing.assert_array_equal(stats.decayed, [[0.5, 1, 0.5, 0], [0.5, 0, 0.5, 1]])
    np.testing.assert_array_equal(stats.total, [[1, 2, 1, 0], [1, 0, 1, 2]])  # never decayed
    assert stats.scores("lru") is not stats.decayed and stats.scores("lfu_decay") is stats.decayed


def test_seeded_stats_start_from_the_seed() -> None:
    seed = np.arange(8.0).reshape(2, 4)
    stats = RoutingStats(2, 4, seed)
    seed[0, 0] = 100  # a copy, not the caller's array
    assert stats.decayed[0, 0] == 0 and stats.total[1, 3] == 7


def test_swaps_take_the_best_gains_within_the_budget_and_never_churn() -> None:
    scores = np.array([[5.0, 1.0, 9.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    resident = [{0, 1}, {0, 1}]
    assert plan_swaps(resident, scores, 10) == [(0, 1, 2)]  # 9 for 1; 0 is not worth 5; layer 1: equal
    assert plan_swaps(resident, scores, 0) == []
    scores[0, 3] = 4.0  # hotter than 1 but not than 0, which is the next victim in line
    assert plan_swaps(resident, scores, 10) == [(0, 1, 2)]
    scores[1] = [0.0, 1.0, 2.0, 6.0]
    assert plan_swaps(resident, scores, 10) == [(0, 1, 2), (1, 0, 3), (1, 1, 2)]  # by gain: 8, 6, 1
    assert plan_swaps(resident, scores, 2) == [(0, 1, 2), (1, 0, 3)]


def test_swap_pairs_hottest_outsider_with_coldest_insider() -> None:
    scores = np.array([[1.0, 2.0, 10.0, 8.0, 0.0]])
    assert plan_swaps([{0, 1, 4}], scores, 5) == [(0, 4, 2), (0, 0, 3)]


def test_admissions_evict_the_coldest_unselected_expert_up_to_the_limit() -> None:
    held = [{0, 1, 2}, {0, 1}]
    scores = np.array([[5.0, 1.0, 3.0, 2.0, 0.5], [1.0, 4.0, 0.0, 0.0, 9.0]])
    selected = np.array([[1, 3, 4], [2, 4, 0]])
    # lfu: 3 (2.0) beats victim 2 (3.0)? no; 4 (0.5) neither; layer 1: 4 (9.0) evicts 1 (0 is selected)
    assert plan_admissions(held, (), selected, scores, "lfu_decay", limit=5) == [(1, 1, 4)]
    # lru admits every miss while an unselected victim is left: layer 0 has one (2), then 0
    assert plan_admissions(held, (), selected, scores, "lru", limit=5) == [(0, 2, 3), (0, 0, 4), (1, 1, 2)]
    assert plan_admissions(held, (), selected, scores, "lru", limit=2) == [(0, 2, 3), (0, 0, 4)]
    assert plan_admissions(held, {(0, 3)}, selected, scores, "lru", limit=5) == [(0, 2, 4), (1, 1, 2)]


def test_victim_is_the_coldest_candidate() -> None:
    row = np.array([3.0, 1.0, 1.0, 7.0])
    assert pick_victim([0, 2, 3], row) == 2
    assert pick_victim([2, 1], row) == 1  # ties: lower id


def test_counts_persist_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path))
    counts = np.arange(12.0).reshape(3, 4)
    path = save_counts("abc123", counts)
    assert path == counts_path("abc123") and path.is_relative_to(tmp_path)
    np.testing.assert_array_equal(load_counts("abc123", (3, 4)), counts)
    assert load_counts("abc123", (4, 3)) is None  # another shape: not this model's
    assert load_counts("other", (3, 4)) is None
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_a_placement_file_seeds_a_start_until_this_machines_own_counts_cover_more(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    tuned = np.arange(12.0).reshape(3, 4)  # 66 selections
    path = write_placement(tmp_path / "winner.json", tuned, "abc123", "learned by a trial")
    assert seed_counts("abc123", (3, 4), None) == (None, "no counts")
    counts, source = seed_counts("abc123", (3, 4), path)
    np.testing.assert_array_equal(counts, tuned)
    assert source == "the placement file's counts"
    save_counts("abc123", np.full((3, 4), 5.5))  # 66 selections too: a tie goes to the file
    assert seed_counts("abc123", (3, 4), path)[1] == "the placement file's counts"
    save_counts("abc123", tuned + 1)  # a serve seeded from the file saved the file's counts and more
    counts, source = seed_counts("abc123", (3, 4), path)
    np.testing.assert_array_equal(counts, tuned + 1)
    assert source == "this machine's saved counts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "winner.json"]  # no temporary file left behind


@pytest.mark.parametrize("text, message", [
    (None, "does not exist"),
    ("not json", "cannot read placement file"),
    ('{"format": "something else"}', "is not an autotune placement file"),
    ('{"format": "autotune-placement-1", "model_fingerprint": "other", "counts": []}', "of another model"),
    ('{"format": "autotune-placement-1", "model_fingerprint": "abc123", "counts": [[1, 2]]}', "counts of shape (1, 2)"),
])
def test_a_placement_file_that_is_missing_or_not_this_models_is_a_one_line_error(tmp_path, text, message) -> None:
    path = tmp_path / "placement.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(AutotuneError, match=re.escape(message)) as error:
        read_placement(path, "abc123", (3, 4))
    assert "\n" not in str(error.value)


def test_serve_checks_a_placement_against_the_moe_layers_only(deepseek2_model, tmp_path) -> None:
    """A dense-led family's counts cover its MoE layers (3 of deepseek2-tiny's 4), as the runtime keeps them."""
    from autotune.model_info import inspect_model
    from autotune.serve.launch import check_placement

    profile = inspect_model(deepseek2_model)
    path = write_placement(tmp_path / "moe.json", np.ones((3, 16)), profile.fingerprint, "test")
    check_placement(profile, {"placement": str(path)})
    every_layer = write_placement(tmp_path / "all.json", np.ones((4, 16)), profile.fingerprint, "test")
    with pytest.raises(AutotuneError, match=re.escape("counts of shape (4, 16), the model has (3, 16)")):
        check_placement(profile, {"placement": str(every_layer)})

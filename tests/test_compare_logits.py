"""The logits comparison the exactness bars read (``studies/runtime_full_residency/compare_logits``)."""

from __future__ import annotations

import numpy as np

from studies.runtime_full_residency.compare_logits import agreement


def test_where_the_picks_differ_it_says_how_near_a_tie_they_were() -> None:
    theirs = np.array([[0.0, 3.0, 1.0], [2.0, 1.99, 0.0], [0.0, 0.0, 5.0]])
    ours = np.array([[0.0, 2.9, 1.1], [1.98, 2.0, 0.0], [5.0, 0.0, 5.0 - 1e-3]])
    result = agreement(ours, theirs)
    assert result["argmax_differs_at"] == [1, 2]
    # step 1: llama.cpp ranks our pick 0.01 below its own, we rank its pick 0.02 below ours
    assert np.allclose(result["gaps_where_argmax_differs"], [[0.01, 0.02], [5.0, 1e-3]])
    assert result["argmax_agreement"] == 1 / 3

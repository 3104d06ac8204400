"""The expert cache's VRAM arithmetic: cap -> slots per layer, and the predicted peak."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.cache_runtime.budget import (ACTIVATION_SLACK, GIB, ModelSizes, activation_bytes, entropies,
                                           layer_weights, plan_vram, plan_with_slots, predict_peak_vram,
                                           split_slots, whole_layer_slots)
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.learned import save_counts
from autotune.errors import AutotuneError

# the qwen3-30b-a3b shape (sizes as its synthetic GGUF has them)
QWEN = ModelSizes(n_layers=48, n_expert=128, n_expert_used=8, n_embd=2048, n_ff_expert=768, n_head=32,
                  n_head_kv=4, head_dim=128, n_vocab=151936, expert_bytes=3_059_712,
                  resident_bytes=1_000_000_000, largest_dense_elems=4096 * 2048)


def test_split_slots_equal_capped_and_proportional() -> None:
    assert split_slots(10, 8, [1, 1, 1, 1]) == [3, 3, 2, 2]
    assert split_slots(100, 8, [1, 1, 1]) == [8, 8, 8]  # no layer above its expert count
    assert split_slots(12, 8, [3, 1, 0]) == [8, 4, 0]  # the capped layer's excess goes on
    assert split_slots(0, 8, [1, 2]) == [0, 0]
    assert sum(split_slots(37, 16, np.random.default_rng(0).random(5))) == 37


def test_whole_layers_fill_from_the_last_layer_with_one_partial_layer() -> None:
    assert whole_layer_slots(10, 4, 4) == [0, 2, 4, 4]
    assert whole_layer_slots(8, 4, 4) == [0, 0, 4, 4]
    assert whole_layer_slots(99, 3, 4) == [4, 4, 4]
    assert whole_layer_slots(0, 3, 4) == [0, 0, 0]


def test_a_whole_layer_plan_holds_as_many_slots_as_a_spread_one() -> None:
    """The layout moves slots between layers: the same total fits, less what the prefill's
    staging needs more (a layer with no slots streams all its experts); the lent room grows the
    partial layer and the layers below it."""
    for cap_gib in (8, 12, 16):
        spread = plan_vram(QWEN, CacheConfig(vram_cap=cap_gib * GIB, lend_prefill_room=True))
        whole = plan_vram(QWEN, CacheConfig(vram_cap=cap_gib * GIB, lend_prefill_room=True,
                                            slot_layout="whole_layers"))
        assert whole.peak <= cap_gib * GIB and whole.staging == 128 * QWEN.expert_bytes
        assert sum(spread.slots) - min(spread.slots) <= sum(whole.slots) <= sum(spread.slots)
        assert list(whole.slots) == whole_layer_slots(sum(whole.slots), 48, 128)
        grown = [s + n for s, n in zip(whole.slots, whole.lent_slots)]
        assert grown == whole_layer_slots(sum(grown), 48, 128) and sum(whole.lent_slots) > 0


def test_entropy_shares_favour_flat_layers() -> None:
    counts = np.array([[100, 0, 0, 0], [25, 25, 25, 25]])
    h = entropies(counts)
    assert h[0] == pytest.approx(0.0) and h[1] == pytest.approx(np.log(4))
    assert layer_weights(2, 0.0, counts) == [0.5, 0.5]
    assert layer_weights(2, 1.0, counts) == pytest.approx([0.0, 1.0])
    assert layer_weights(2, 0.5, counts) == pytest.approx([0.25, 0.75])
    assert layer_weights(2, 1.0, None) == [0.5, 0.5]  # no counts: equal


def test_plan_fits_the_cap_with_the_most_slots() -> None:
    for cap_gib in (12, 16):
        cfg = CacheConfig(vram_cap=cap_gib * GIB, prefetch_depth=1)
        plan = plan_vram(QWEN, cfg)
        assert plan.peak <= cfg.vram_cap
        one_more = plan_with_slots(QWEN, cfg, sum(plan.slots) + 1)
        assert one_more.peak > cfg.vram_cap
        assert plan.staging == (128 - min(plan.slots)) * QWEN.expert_bytes
        assert plan.prefetch_ring == 2 * 8 * QWEN.expert_bytes
        assert max(plan.slots) - min(plan.slots) <= 1  # slot_split 0: equal
    assert 60 < sum(plan_vram(QWEN, CacheConfig(vram_cap=12 * GIB)).slots) / 48 < 100


def test_plan_at_full_residency_needs_no_staging_or_ring() -> None:
    plan = plan_vram(QWEN, CacheConfig(vram_cap=40 * GIB, prefetch_depth=2))
    assert plan.slots == (128,) * 48 and plan.staging == 0 and plan.prefetch_ring == 0


def test_plan_counts_kv_cache_and_activations() -> None:
    small, large = (plan_with_slots(QWEN, CacheConfig(vram_cap=GIB, max_ctx=ctx), 0) for ctx in (4096, 32768))
    assert large.kv_cache == 8 * small.kv_cache == 8 * 2 * 48 * 4 * 4096 * 128 * 2
    assert plan_with_slots(QWEN, CacheConfig(vram_cap=GIB, prefill_chunk=512), 0).activations < small.activations


def test_a_smaller_prefill_chunk_leaves_room_for_more_slots() -> None:
    full = plan_vram(QWEN, CacheConfig(vram_cap=12 * GIB, prefetch_depth=4))
    small = plan_vram(QWEN, CacheConfig(vram_cap=12 * GIB, prefetch_depth=4, prefill_chunk=512))
    assert small.peak <= 12 * GIB and sum(small.slots) > sum(full.slots)
    freed = full.activations - small.activations
    assert sum(small.slots) - sum(full.slots) >= freed // QWEN.expert_bytes - 48  # staging grows a little


def test_activations_hold_the_keys_a_last_chunk_attends_to() -> None:
    """A 4096-token prompt in 512-token passes: the last pass repeats K and V of all 4096
    positions to every head (f16), and masks them."""
    repeated = 2 * QWEN.n_head * 4096 * QWEN.head_dim * 2
    assert activation_bytes(QWEN, 512, 4096) >= repeated + 512 * 4096 + 512 * 180_000


def test_lent_slots_fill_the_room_only_a_prefill_needs() -> None:
    for cap_gib in (12, 16):
        plain = plan_vram(QWEN, CacheConfig(vram_cap=cap_gib * GIB, prefetch_depth=4))
        lent = plan_vram(QWEN, CacheConfig(vram_cap=cap_gib * GIB, prefetch_depth=4, lend_prefill_room=True))
        assert (lent.slots, lent.peak) == (plain.slots, plain.peak) and not any(plain.lent_slots)
        room = lent.activations / ACTIVATION_SLACK + lent.staging  # the slack is kept for fragmentation
        assert room - 48 * QWEN.expert_bytes < sum(lent.lent_slots) * QWEN.expert_bytes <= room
        assert max(lent.lent_slots) - min(lent.lent_slots) <= 1
    near_full = plan_vram(QWEN, CacheConfig(vram_cap=20 * GIB, lend_prefill_room=True))
    assert sum(near_full.slots) < 48 * 128 and sum(near_full.lent_slots) > 0
    assert all(s + n <= 128 for s, n in zip(near_full.slots, near_full.lent_slots))  # no layer past its experts


def test_cap_below_fixed_need_is_a_one_line_error() -> None:
    with pytest.raises(AutotuneError, match="below the cache runtime's fixed need"):
        plan_vram(QWEN, CacheConfig(vram_cap=2 * GIB))


def test_predict_peak_vram_plans_with_the_learned_counts(tiny_model, tmp_path, monkeypatch) -> None:
    from autotune.cache_runtime.budget import model_sizes
    from autotune.cache_runtime.learned import model_fingerprint

    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path))
    sizes = model_sizes(tiny_model)
    assert (sizes.n_layers, sizes.n_expert, sizes.expert_bytes) == (4, 16, 127488)
    probe = CacheConfig(vram_cap=GIB, slot_split=1.0)
    cfg = CacheConfig(vram_cap=plan_with_slots(sizes, probe, 30).peak, slot_split=1.0)
    assert predict_peak_vram(tiny_model, cfg) == plan_vram(sizes, cfg).peak <= cfg.vram_cap
    counts = np.ones((4, 16))
    counts[0] = 0
    counts[0, 0] = 1000  # layer 0 routes to one expert only: it needs the fewest slots
    save_counts(model_fingerprint(tiny_model), counts)
    learned = plan_vram(sizes, cfg, counts)
    assert learned.slots[0] == min(learned.slots) < max(learned.slots)
    assert predict_peak_vram(tiny_model, cfg) == learned.peak
    off = CacheConfig.from_dict({**cfg.to_dict(), "learned_placement": False})
    assert predict_peak_vram(tiny_model, off) == plan_vram(sizes, off).peak


def test_planning_does_not_import_torch(tiny_model, tmp_path, monkeypatch) -> None:
    """The tuner's process predicts peaks without torch (and its import-order trouble)."""
    import subprocess
    import sys

    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path))
    code = ("import sys\nfrom autotune.cache_runtime import CacheConfig\n"
            "from autotune.cache_runtime.budget import predict_peak_vram\n"
            f"predict_peak_vram({str(tiny_model)!r}, CacheConfig(vram_cap=2 * 2**30))\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)

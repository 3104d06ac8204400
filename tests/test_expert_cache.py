"""The expert cache on the CPU path (tiny preset): same greedy tokens as full residency at any
budget and in every mode, table entries always pointing at the right bytes, statistics,
prefetch bookkeeping, learned placement across restarts."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from autotune.cache_runtime.budget import GIB, model_sizes, plan_with_slots
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.errors import AutotuneError

PROMPT = [5, 17, 300, 42, 7, 999]
STEPS = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread", "own_data_dir")


@pytest.fixture(scope="module")
def full_tokens(tiny_model: Path) -> list[int]:
    return Engine(tiny_model, device="cpu", kernels="torch").generate(PROMPT, STEPS)


def config(model: Path, slots: int, **knobs) -> CacheConfig:
    """A config whose cap holds exactly ``slots`` expert slots (CPU: float32 KV cache)."""
    base = CacheConfig(vram_cap=GIB, learned_placement=False, **knobs)
    cap = plan_with_slots(model_sizes(model), base, slots, kv_element_bytes=4).peak
    return CacheConfig.from_dict({**base.to_dict(), "vram_cap": cap})


def engine(model: Path, slots: int, **knobs) -> Engine:
    return Engine(model, device="cpu", kernels="torch", cache_config=config(model, slots, **knobs))


def assert_table_points_at_each_experts_bytes(e: Engine) -> None:
    cache = e.expert_cache
    cache.drain()
    table = cache.table.table
    for layer, mats in enumerate(cache.home):
        for expert in range(cache.n_expert):
            for m, home in enumerate(mats):
                got = ctypes.string_at(int(table[layer, expert, m]), home[expert].numel())
                assert got == home[expert].numpy().tobytes(), (layer, expert, m)


@pytest.mark.parametrize("slots", [4, 32, 64])  # 1 per layer, half, all
@pytest.mark.parametrize("mode", ["zero_copy", "copy"])
@pytest.mark.parametrize("eviction", ["lfu_decay", "lru", "static"])
def test_same_tokens_as_full_residency(tiny_model: Path, full_tokens, slots, mode, eviction) -> None:
    e = engine(tiny_model, slots, miss_mode=mode, eviction=eviction, rebalance_interval=3,
               prefill_bypass=4, prefetch_depth=1 if slots == 32 else 0)
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert_table_points_at_each_experts_bytes(e)
    stats = e.cache_stats()
    assert sum(stats["slots_per_layer"]) == slots
    assert stats["tokens"] == STEPS - 1
    if slots == 64:
        assert stats["hit_rate"] == 1.0 and stats["pcie_bytes_per_token"] == 0
    else:
        assert 0 < stats["misses"] and stats["pcie_bytes_per_token"] > 0
        assert stats["prefill_bypass_batches"] == 1  # the 6-token prompt; decode never bypasses
    if eviction == "static":
        assert stats["rebalances"] == stats["admissions"] == 0
    else:
        assert stats["rebalances"] == (STEPS - 1) // 3
        assert (stats["admissions"] > 0) == (mode == "copy" and slots < 64)


def test_zero_copy_bytes_are_the_misses_read_over_pcie(tiny_model: Path, full_tokens) -> None:
    e = engine(tiny_model, 8, eviction="static", rebalance_interval=0, prefill_bypass=0)
    assert e.generate(PROMPT, STEPS) == full_tokens
    s = e.cache_stats()
    selections = s["tokens"] * 4 * 4  # tokens x layers x top-k
    assert s["misses"] == round(selections * (1 - s["hit_rate"]))
    assert s["zero_copy_bytes"] == s["misses"] * 127488 and s["copy_bytes"] == 0
    per_layer = np.array(s["hit_rate_per_layer"])
    assert per_layer.mean() == pytest.approx(s["hit_rate"], abs=1e-3)


def test_prefill_runs_in_the_configured_chunks(tiny_model: Path, full_tokens) -> None:
    e = engine(tiny_model, 32, prefill_chunk=2, prefill_bypass=4)
    assert e.prefill_chunk == 2
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert e.cache_stats()["prefill_bypass_batches"] == 0  # chunks of 2 tokens never reach the bypass's 4
    e.configure_cache(config(tiny_model, 32, prefill_chunk=6, prefill_bypass=4))
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert e.cache_stats()["prefill_bypass_batches"] == 1


def test_lent_slots_hold_experts_between_prefills_and_empty_for_them(tiny_model: Path, full_tokens) -> None:
    """On the tiny model the prefill's room holds every other expert: decode at full residency,
    prefill with one planned slot per layer and the staging area."""
    e = engine(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4, rebalance_interval=3)
    cache = e.expert_cache
    assert cache.plan.lent_slots == (15, 15, 15, 15) and cache.staging is None
    assert [len(h) for h in cache.held] == [16] * 4
    for _ in range(2):  # a second sequence takes the room back and lends it again
        e.reset()
        assert e.generate(PROMPT, STEPS) == full_tokens
    assert_table_points_at_each_experts_bytes(e)
    s = e.cache_stats()
    assert s["hit_rate"] == 1.0 and s["prefill_bypass_batches"] == 2 and s["lend_refusals"] == 0
    cache.before_prefill()
    assert [len(h) for h in cache.held] == [1] * 4 and cache.lent.buffer is None and len(cache.staging[0]) == 15
    assert_table_points_at_each_experts_bytes(e)
    cache.after_prefill()
    assert [len(h) for h in cache.held] == [16] * 4 and cache.staging is None


def test_storage_taken_inside_a_prefill_can_be_written_outside_one(tiny_model: Path) -> None:
    """A prefill (inference mode) takes the staging area and lends the room again; on a GPU the
    statistics then admit experts into lent slots outside inference mode, so neither may be an
    inference tensor (torch refuses in-place writes to one there)."""
    e = engine(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4)
    cache = e.expert_cache
    with torch.inference_mode():
        cache.before_prefill()
        staging = cache.staging
        cache.after_prefill()
    lent = [m for layer in cache.lent.views for views in layer for m in views]
    for m in (*lent, *staging):
        m.copy_(m)  # raises on an inference tensor
    e.reset()
    e.generate(PROMPT, 2)
    assert not any(m.is_inference() for layer in cache.lent.views for views in layer for m in views)


def test_the_passes_expert_ids_are_gone_when_the_room_is_lent_again(tiny_model: Path, monkeypatch) -> None:
    """On a GPU a tensor alive when the room is lent again would pin it (``lent_slots``): the
    ids every pass made (6 MB at 2048 tokens on the 30B preset) are dropped by then."""
    import weakref

    e = engine(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4, prefill_chunk=8)
    made: list[weakref.ref] = []
    forward = e.forward

    def recording_forward(ops, tokens, start):
        logits, ids = forward(ops, tokens, start)
        made.append(weakref.ref(ids))
        return logits, ids

    alive_at_lend: list[bool] = []
    after_prefill = e.expert_cache.after_prefill
    monkeypatch.setattr(e, "forward", recording_forward)
    monkeypatch.setattr(e.expert_cache, "after_prefill",
                        lambda: (alive_at_lend.extend(r() is not None for r in made), after_prefill()))
    e.reset()
    e.prefill(list(range(10, 30)))
    assert len(made) == 3 and alive_at_lend == [False] * 3


@pytest.mark.parametrize("engine_name", ["sm", "dma"])
def test_partly_lent_slots_under_swaps_and_prefetch(tiny_model: Path, full_tokens, monkeypatch, engine_name) -> None:
    """Two lent slots per layer beside one planned: copy-mode admissions and LRU rebalances move
    experts through lent slots, and prefills take them back, with the same tokens."""
    from dataclasses import replace

    from autotune.cache_runtime import budget

    planned = budget.plan_vram
    monkeypatch.setattr(budget, "plan_vram", lambda *a, **k: replace(planned(*a, **k), lent_slots=(2, 2, 2, 2)))
    e = engine(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4, miss_mode="copy", eviction="lru",
               rebalance_interval=2, prefetch_depth=1, prefetch_engine=engine_name)
    for _ in range(2):
        e.reset()
        assert e.generate(PROMPT, STEPS) == full_tokens
    assert_table_points_at_each_experts_bytes(e)
    s = e.cache_stats()
    assert s["lent_slots_per_layer"] == [2, 2, 2, 2] and s["admissions"] > 0 and 0 < s["hit_rate"] < 1
    assert all(sorted(h.values()) == [0, 1, 2] for h in e.expert_cache.held)


def test_prefetch_precision_and_recall_bookkeeping(tiny_model: Path) -> None:
    from autotune.cache_runtime.prefetch import Prefetcher
    from autotune.cache_runtime.step_counts import count_step

    e = engine(tiny_model, 4, eviction="static", rebalance_interval=0, prefetch_depth=1)
    pf: Prefetcher = e.expert_cache.prefetcher
    selected = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])
    in_slot = torch.zeros(4, 16, dtype=torch.bool)
    in_slot[1, 4] = in_slot[2, 8] = True
    pf.pred.copy_(torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1], [8, 9, 10, 0], [0, 1, 2, 3]]))
    pf.staged.copy_(torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]))
    pf.counters.zero_()
    hits, tokens = torch.zeros(4, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    count_step(selected.int(), in_slot, hits, tokens, pf.step_counts(), fused=False)
    assert hits.tolist() == [0, 1, 1, 0] and tokens.tolist() == [1]
    # layer 0 is never predicted; layers 1-3: 12 predictions, 2 + 3 + 0 right; 3 + 3 + 4 staged,
    # 1 + 2 + 0 of them used; 3 + 3 + 4 selections missed the slots
    s = pf.stats()
    assert s["overlap"] == pytest.approx(5 / 12)
    assert (s["staged"], s["served"]) == (10, 3)
    assert s["precision"] == pytest.approx(3 / 10) and s["recall"] == pytest.approx(3 / 10)


def test_learned_placement_seeds_the_next_start(tiny_model: Path, full_tokens) -> None:
    first = Engine(tiny_model, device="cpu", kernels="torch",
                   cache_config=CacheConfig.from_dict({**config(tiny_model, 16).to_dict(), "learned_placement": True}))
    assert not first.expert_cache.seeded
    first.generate(PROMPT, STEPS)
    counts = first.expert_cache.routing.total.copy()
    first.close()  # saves the counts
    second = Engine(tiny_model, device="cpu", kernels="torch",
                    cache_config=CacheConfig.from_dict({**config(tiny_model, 16).to_dict(), "learned_placement": True}))
    cache = second.expert_cache
    assert cache.seeded
    for layer in range(4):
        held = set(cache.held[layer])
        hottest = np.lexsort((np.arange(16), -counts[layer]))[:4]
        assert held == set(int(e) for e in hottest)
    assert second.generate(PROMPT, STEPS) == full_tokens
    assert second.cache_stats()["hit_rate"] > 0


def test_reconfigure_without_reloading(tiny_model: Path, full_tokens) -> None:
    e = engine(tiny_model, 4, miss_mode="copy")
    assert e.generate(PROMPT, STEPS) == full_tokens
    e.configure_cache(config(tiny_model, 40, prefetch_depth=2))
    assert sum(e.cache_stats()["slots_per_layer"]) == 40 and e.cache_stats()["tokens"] == 0
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert_table_points_at_each_experts_bytes(e)


def test_a_cap_below_the_fixed_need_is_refused(tiny_model: Path) -> None:
    with pytest.raises(AutotuneError, match="below the cache runtime's fixed need"):
        Engine(tiny_model, device="cpu", kernels="torch", cache_config=CacheConfig(vram_cap=2**20))


def test_reconfiguring_to_another_context_is_refused(tiny_model: Path) -> None:
    e = engine(tiny_model, 8)
    with pytest.raises(AutotuneError, match="differs from the loaded KV cache"):
        e.configure_cache(CacheConfig.from_dict({**e.expert_cache.cfg.to_dict(), "max_ctx": 128}))


def test_each_step_starts_with_the_prefetch_ring_empty(tiny_model: Path, full_tokens) -> None:
    """An entry points into the ring only once committed in the current step, so a lagging
    prefetch stream can never overwrite a row that the compute stream still reads."""
    e = engine(tiny_model, 4, eviction="static", rebalance_interval=0, prefetch_depth=1)
    assert e.generate(PROMPT, STEPS) == full_tokens
    pf = e.expert_cache.prefetcher
    assert (pf.occupant >= 0).any()  # the last step staged something
    ring = set(pf.ring_addr[:, 0].tolist())
    e.expert_cache.begin_step()
    assert not (pf.occupant >= 0).any()
    assert not ring & set(e.expert_cache.table.table[..., 0].flatten().tolist())


class _LandedCopy:
    """A swap's copy event that has completed (the CPU path has no copy stream)."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def test_prefill_bypass_with_a_swap_still_in_flight(tiny_model: Path, full_tokens) -> None:
    """A rebalance's copy may still be in flight when a prompt arrives: its layer then holds one
    expert fewer than its slots, and the bypass must still stage every other expert."""
    e = engine(tiny_model, 32, eviction="lfu_decay", rebalance_interval=0, prefill_bypass=4)
    cache = e.expert_cache
    victim, slot = next(iter(cache.held[0].items()))
    admit = next(x for x in range(cache.n_expert) if x not in cache.held[0])
    # what _schedule does on the GPU, up to the copy's completion
    cache.held[0].pop(victim)
    cache.incoming.add((0, admit))
    cache._write([(0, victim, cache.home_addr[0][victim], False)])
    cache._copy_in(0, slot, admit)
    cache.counters.swaps_in_flight.append((_LandedCopy(), [(0, slot, admit)]))
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert cache.held[0][admit] == slot and not cache.incoming
    assert_table_points_at_each_experts_bytes(e)


@pytest.mark.parametrize("depth", [1, 2])
def test_dma_prefetch_gives_full_residency_tokens(tiny_model: Path, full_tokens, depth: int) -> None:
    """Prefetch copies queued by the host (the DMA engine's way) and claimed on the compute
    side: the same tokens, experts served from the ring, every copy counted as PCIe bytes."""
    e = engine(tiny_model, 4, eviction="static", rebalance_interval=0, prefetch_depth=depth, prefetch_engine="dma")
    assert e.generate(PROMPT, STEPS) == full_tokens
    assert_table_points_at_each_experts_bytes(e)
    s = e.cache_stats()
    assert s["served_by_prefetch"] > 0 and s["prefetch_recall"] > 0
    copied = e.expert_cache.prefetcher.stager.copied
    assert copied >= e.expert_cache.prefetcher.stats()["staged"] > 0
    assert s["copy_bytes"] == copied * 127488
    e.close()


@pytest.mark.parametrize("model", ["qwen2moe_model", "glm4moe_model", "deepseek3_model", "gpt_oss_model"])
@pytest.mark.parametrize("mode", ["zero_copy", "copy"])
def test_shared_experts_and_dense_layers_keep_full_residency_tokens(model: str, mode: str,
                                                                    request: pytest.FixtureRequest) -> None:
    """Shared experts stay resident weights and leading dense layers have no slots: the cache
    numbers the MoE layers only (glm4moe-tiny: 3 of 4), one slot each, with prefetch; gpt-oss's
    expert biases stay resident beside the experts that move."""
    path = request.getfixturevalue(model)
    want = Engine(path, device="cpu", kernels="torch").generate(PROMPT, STEPS)
    e = engine(path, model_sizes(path).n_layers, miss_mode=mode, rebalance_interval=3, prefill_bypass=4,
               prefetch_depth=1)
    assert e.generate(PROMPT, STEPS) == want
    assert_table_points_at_each_experts_bytes(e)
    stats = e.cache_stats()
    assert stats["slots_per_layer"] == [1] * e.cfg.n_moe_layers and stats["misses"] > 0

"""The expert cache on the Triton kernels: table-addressed experts in slots, staging, the
prefetch ring and home memory; on the CPU under Triton's interpreter, compiled on the GPU
machine (where the decode step is also a captured CUDA graph that must survive every move).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from autotune.cache_runtime import triton_ops  # noqa: E402
from autotune.cache_runtime.budget import GIB, model_sizes, plan_with_slots  # noqa: E402
from autotune.cache_runtime.cache_config import CacheConfig  # noqa: E402
from autotune.cache_runtime.engine import Engine  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROMPT = [5, 17, 300, 42]


@pytest.fixture(autouse=True)
def interpreter_friendly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("AUTOTUNE_DATA_DIR", str(tmp_path / "data"))
    if DEVICE == "cpu":
        for name, value in dict(GEMV_WARPS=32, ROUTER_WARPS=32, GATE_UP_WARPS=64, DOWN_ROWS=16, ATTN_SPLITS=4).items():
            monkeypatch.setattr(triton_ops, name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(model: Path, slots: int, **knobs) -> CacheConfig:
    base = CacheConfig(vram_cap=GIB, learned_placement=False, max_ctx=64, **knobs)
    cap = plan_with_slots(model_sizes(model), base, slots).peak
    return CacheConfig.from_dict({**base.to_dict(), "vram_cap": cap})


def test_stage_kernels_copy_predicted_misses_and_repoint_the_table() -> None:
    """The prefetch ring's three kernels on a hand-made table: only non-resident predicted
    experts are copied and repointed; the previous occupants go back home."""
    from autotune.cache_runtime.triton_prefetch import ring_release_kernel, stage_commit_kernel, stage_copy_kernel

    rng = np.random.default_rng(0)
    sizes = (48, 48, 64)  # bytes of gate, up, down: 2 programs x 2 loads x 4 words cover 16 words
    home = [torch.from_numpy(rng.integers(0, 255, (6, n), dtype=np.uint8)).to(DEVICE) for n in sizes]
    slot = [torch.zeros(1, n, dtype=torch.uint8, device=DEVICE) for n in sizes]
    ring = [torch.zeros(2, n, dtype=torch.uint8, device=DEVICE) for n in sizes]
    addr = lambda mats, i: [m[i].data_ptr() for m in mats]  # noqa: E731
    home_table = torch.tensor([[addr(home, e) for e in range(6)]], dtype=torch.int64, device=DEVICE)
    table = home_table.clone()
    table[0, 3] = torch.tensor(addr(slot, 0))  # expert 3 is resident
    ring_addr = torch.tensor([addr(ring, i) for i in range(2)], dtype=torch.int64, device=DEVICE)
    occupant = torch.tensor([5, -1], dtype=torch.int64, device=DEVICE)  # ring row 0 held expert 5
    table[0, 5] = ring_addr[0]
    pred = torch.tensor([3, 1], dtype=torch.int32, device=DEVICE)
    staged = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    ring_release_kernel[(1,)](occupant, table, home_table, ring_addr, 0, TOP_K=2, K_PAD=2)
    words = [n // 4 for n in sizes]
    stage_copy_kernel[(2, 3, 2)](pred, table[0], home_table[0], ring_addr, 0, *words, BLOCK=4, ITERS=2)
    stage_commit_kernel[(1,)](pred, table[0], home_table[0], ring_addr, 0, occupant, staged, 0, TOP_K=2, K_PAD=2)
    assert table[0, 5].tolist() == home_table[0, 5].tolist()  # released
    assert table[0, 3].tolist() == addr(slot, 0)  # resident: untouched
    assert table[0, 1].tolist() == ring_addr[1].tolist()  # staged into ring row 1
    assert staged.tolist() == [0, 1] and occupant.tolist() == [-1, 1]
    for r, h in zip(ring, home):
        assert torch.equal(r[1], h[1]) and not r[0].any()


def test_dma_claim_takes_only_this_steps_landed_rows() -> None:
    """The DMA prefetch's claim on a hand-made table of 2 layers x 6 experts, ring rows 2..3 for
    layer 1: the previous occupant goes home; a row tagged for this step and layer is claimed
    unless its expert is resident; a row of another step, or made invalid, is not; a predicted
    copy that never lands is waited for WAIT_SPINS reads, then its expert reads home, and the
    wait is counted."""
    from autotune.cache_runtime.dma_prefetch import publish_kernel, tag
    from autotune.cache_runtime.triton_prefetch import ring_claim_kernel

    home = torch.arange(2 * 6 * 3, dtype=torch.int64, device=DEVICE).reshape(2, 6, 3) + 1000
    ring_addr = torch.arange(4 * 3, dtype=torch.int64, device=DEVICE).reshape(4, 3) + 5000
    table = home.clone()
    table[1, 2] = torch.tensor([7000, 7001, 7002])  # layer 1, expert 2 is resident
    table[0, 4] = ring_addr[2]  # row 2 still holds layer 0's expert 4 from earlier
    occupant = torch.tensor([-1, -1, 4, -1], dtype=torch.int64, device=DEVICE)
    seq = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    staged = torch.full((2,), -1, dtype=torch.int32, device=DEVICE)
    waits = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    pred = torch.tensor([5, 2], dtype=torch.int32, device=DEVICE)  # layer 1's predictions, rows 2 and 3
    # row 2: layer 1's expert 5 for step 7 (landed); row 3: expert 2 (resident) for step 7
    tags = torch.tensor([-1, -1, tag(7, 1, 5, 2, 6), tag(7, 1, 2, 2, 6)], dtype=torch.int64, device=DEVICE)
    ring_claim_kernel[(1,)](tags, seq, pred, table, home, ring_addr, 2, occupant, staged, waits, 1, 2, 6, TOP_K=2,
                            K_PAD=2, WAIT_SPINS=3)
    assert table[0, 4].tolist() == home[0, 4].tolist()  # released
    assert table[1, 5].tolist() == ring_addr[2].tolist()  # claimed
    assert table[1, 2].tolist() == [7000, 7001, 7002]  # resident: untouched
    assert occupant.tolist() == [-1, -1, 6 + 5, -1] and staged.tolist() == [1, 0]
    assert waits.tolist() == [0, 0]  # landed before the claim
    # the next step: the same tags are a step old, nothing is claimed, row 2's occupant goes home
    seq += 1
    ring_claim_kernel[(1,)](tags, seq, pred, table, home, ring_addr, 2, occupant, staged, waits, 1, 2, 6, TOP_K=2,
                            K_PAD=2, WAIT_SPINS=3)
    assert torch.equal(table[1, 5], home[1, 5]) and staged.tolist() == [0, 0] and occupant.tolist() == [-1] * 4
    assert waits.tolist() == [3, 1]  # expert 5 awaited 3 reads, then given up
    # the mailbox: the predictions that read home (expert 2 is resident: -1), then the step's
    # number, into host memory
    mailbox = torch.zeros(2, 3, dtype=torch.int64, pin_memory=DEVICE == "cuda")
    pred = torch.tensor([3, 2], dtype=torch.int32, device=DEVICE)
    publish_kernel[(1,)](pred, table[1], home[1], seq, mailbox.data_ptr(), 1, TOP_K=2, K_PAD=2)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    assert mailbox.tolist() == [[0, 0, 0], [3, -1, 8]]


@pytest.mark.gpu  # a copy landing while the claim runs needs two GPU streams
def test_dma_claim_waits_for_a_copy_in_flight() -> None:
    """The claim starts before the tag of a predicted expert lands (another stream writes it
    after a sleep) and still takes the row, counting its reads of the tags."""
    from autotune.cache_runtime.dma_prefetch import tag
    from autotune.cache_runtime.triton_prefetch import ring_claim_kernel

    home = torch.arange(2 * 6 * 3, dtype=torch.int64, device=DEVICE).reshape(2, 6, 3) + 1000
    ring_addr = torch.arange(4 * 3, dtype=torch.int64, device=DEVICE).reshape(4, 3) + 5000
    table, occupant = home.clone(), torch.full((4,), -1, dtype=torch.int64, device=DEVICE)
    seq, pred = torch.tensor([7], device=DEVICE), torch.tensor([5, 2], dtype=torch.int32, device=DEVICE)
    staged, waits = torch.zeros(2, dtype=torch.int32, device=DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE)
    tags = torch.full((4,), -1, dtype=torch.int64, device=DEVICE)
    landed = torch.tensor([tag(7, 1, 5, 2, 6), tag(7, 1, 2, 2, 6)], device=DEVICE)
    claim_args = (tags, seq, pred, table, home, ring_addr, 2, occupant, staged, waits, 1, 2, 6)
    tags[2:].copy_(landed)  # compiled now, not while the copier sleeps: a claim that finds its rows landed
    ring_claim_kernel[(1,)](*claim_args, TOP_K=2, K_PAD=2, WAIT_SPINS=1 << 20)
    table.copy_(home), occupant.fill_(-1), staged.zero_(), waits.zero_(), tags.fill_(-1)
    copier = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(copier):
        torch.cuda._sleep(2_000_000)  # about a millisecond
        tags[2:].copy_(landed)
    ring_claim_kernel[(1,)](*claim_args, TOP_K=2, K_PAD=2, WAIT_SPINS=1 << 20)
    torch.cuda.synchronize()
    assert staged.tolist() == [1, 1] and table[1, 5].tolist() == ring_addr[2].tolist()
    assert waits[0] > 0 and waits[1] == 0


@pytest.mark.parametrize("with_prefetch", [True, False])
def test_fused_step_counts_match_the_torch_ops(with_prefetch: bool) -> None:
    """One step's hit and prefetch counters: the Triton kernel adds what the torch ops add."""
    from autotune.cache_runtime.step_counts import PrefetchCounts, count_step

    rng = np.random.default_rng(4)
    layers, n_expert, k = 6, 16, 4
    ids = torch.from_numpy(np.stack([rng.choice(n_expert, k, replace=False) for _ in range(layers)])
                           .astype(np.int32)).to(DEVICE)
    in_slot = torch.from_numpy(rng.random((layers, n_expert)) < 0.5).to(DEVICE)
    pred = torch.from_numpy(np.stack([rng.choice(n_expert, k, replace=False) for _ in range(layers)])
                            .astype(np.int32)).to(DEVICE)
    predicted = torch.tensor([False] + [True] * (layers - 1), device=DEVICE)
    staged = torch.from_numpy(rng.integers(0, 2, (layers, k), dtype=np.int32)).to(DEVICE)
    results = []
    for fused in (False, True):
        hits = torch.full((layers,), 3, dtype=torch.int64, device=DEVICE)
        tokens = torch.full((1,), 7, dtype=torch.int64, device=DEVICE)
        counters = torch.arange(5, dtype=torch.int64, device=DEVICE)
        prefetch = PrefetchCounts(pred, predicted, staged, counters) if with_prefetch else None
        for _ in range(2):
            count_step(ids, in_slot, hits, tokens, prefetch, fused)
        results.append((hits.tolist(), tokens.tolist(), counters.tolist()))
    assert results[0] == results[1]
    assert results[0][1] == [9]  # two steps counted
    if with_prefetch:
        assert results[0][2] != list(range(5))


@pytest.mark.slow
def test_cache_on_triton_kernels_gives_full_residency_tokens(tiny_model: Path) -> None:
    """1 slot per layer, copy mode with rebalances, prefetch depth 1, prefill bypass: the
    grouped GEMM reads staged experts, the decode kernels read slots, the ring and home."""
    # the torch path's tokens (the same as the Triton kernels' at full residency on this
    # prompt; test_runtime_triton checks those kernels against the reference)
    full = Engine(tiny_model, device="cpu", kernels="torch", max_ctx=64).generate(PROMPT, 3)
    cfg = config(tiny_model, 4, miss_mode="copy", rebalance_interval=1, prefetch_depth=1, prefill_bypass=4)
    e = Engine(tiny_model, device=DEVICE, kernels="triton", use_graph=False, cache_config=cfg)
    assert e.generate(PROMPT, 3) == full
    stats = e.cache_stats()
    assert stats["prefill_bypass_batches"] == 1 and stats["rebalances"] == 2
    assert stats["prefetch_precision"] is not None
    # a config's decode launch shapes and input rounding reach the kernels and give the same tokens
    e.configure_cache(CacheConfig.from_dict({**cfg.to_dict(), "chunk_rounds": 1, "gate_up_warps": 16,
                                             "int8_inputs": True}))
    assert (e.ops.chunk_rounds, e.ops.gate_up_warps, e.ops.int8_inputs) == (1, 16, True)
    assert e.generate(PROMPT, 2) == full[:2]  # one decode step on those shapes
    # prefetch by the DMA engines' protocol: the claim kernel points layers at landed ring rows
    e.configure_cache(CacheConfig.from_dict({**cfg.to_dict(), "prefetch_engine": "dma"}))
    assert e.generate(PROMPT, 2) == full[:2]
    assert e.cache_stats()["served_by_prefetch"] > 0


@pytest.mark.gpu
def test_decode_graph_survives_rebalances_admissions_and_prefetch(tiny_model: Path) -> None:
    full = Engine(tiny_model, kernels="triton", max_ctx=64).generate(PROMPT, 48)
    for mode, depth, copies in (("zero_copy", 0, "sm"), ("copy", 1, "sm"), ("zero_copy", 2, "sm"),
                                ("copy", 2, "dma")):
        cfg = config(tiny_model, 8, miss_mode=mode, rebalance_interval=4, prefetch_depth=depth, prefetch_engine=copies)
        e = Engine(tiny_model, kernels="triton", cache_config=cfg)
        assert e.generate(PROMPT, 48) == full, (mode, depth, copies)
        stats = e.cache_stats()
        assert stats["rebalances"] > 0 and 0 < stats["hit_rate"] < 1


@pytest.mark.gpu
def test_lent_slots_survive_prefills_beside_the_decode_graph(tiny_model: Path, monkeypatch) -> None:
    """Three sequences, each prefill taking the lent slots' memory back and lending it again,
    with the captured decode graph reading them: every lend allocated (none refused), and the
    tokens of full residency. Then two lent slots per layer beside one planned, under
    copy-mode admissions, rebalances and DMA prefetch."""
    from dataclasses import replace

    from autotune.cache_runtime import budget

    full = Engine(tiny_model, kernels="triton", max_ctx=64).generate(PROMPT, 24)
    e = Engine(tiny_model, kernels="triton", cache_config=config(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4))
    for _ in range(3):
        e.reset()
        assert e.generate(PROMPT, 24) == full
    stats = e.cache_stats()
    assert stats["lent_slots_per_layer"] == [15] * 4 and stats["lend_refusals"] == 0 and stats["hit_rate"] == 1.0
    planned = budget.plan_vram
    monkeypatch.setattr(budget, "plan_vram", lambda *a, **k: replace(planned(*a, **k), lent_slots=(2, 2, 2, 2)))
    e.configure_cache(config(tiny_model, 4, lend_prefill_room=True, prefill_bypass=4, miss_mode="copy",
                             rebalance_interval=4, prefetch_depth=1, prefetch_engine="dma"))
    for _ in range(3):
        e.reset()
        assert e.generate(PROMPT, 24) == full
    stats = e.cache_stats()
    assert stats["lend_refusals"] == 0 and stats["admissions"] > 0 and 0 < stats["hit_rate"] < 1


def _forced_logits(engine: Engine, feed: list[int]) -> torch.Tensor:
    """Each step's logits, prefilling PROMPT and then decoding ``feed``."""
    engine.reset()
    out = [engine.prefill(PROMPT).clone()]
    for token in feed[:-1]:
        out.append(engine.decode(token).clone())
    return torch.stack(out).float().cpu()


@pytest.mark.parametrize("mode,prefetch_engine,layout", [
    ("cpu", "sm", "spread"), ("cpu", "sm", "whole_layers"),
    pytest.param("auto", "sm", "spread", marks=pytest.mark.gpu),  # interpreted: minutes each
    pytest.param("auto", "dma", "spread", marks=pytest.mark.gpu),
    pytest.param("cpu", "sm", "whole_layers_pcie", marks=pytest.mark.gpu)])
def test_cpu_misses_beside_the_kernels_that_skip_them(tiny_model: Path, mode: str, prefetch_engine: str,
                                                      layout: str) -> None:
    """The device's expert kernels skip the selections the CPU computes (ggml, from host
    memory): at full residency's inputs the logits stay those of full residency. On the GPU
    the step is one graph that waits on the host's flags, with ``auto``'s prefetch staged
    inside it; ``whole_layers`` holds half the layers whole (the host skips them) and leaves
    the others no slots at all; ``_pcie``: the device also reads half of those layers' misses
    over PCIe (``pcie_share``)."""
    steps = 32 if DEVICE == "cuda" else 2
    reference = Engine(tiny_model, device=DEVICE, kernels="triton", max_ctx=64)
    full = reference.generate(PROMPT, steps)
    want = _forced_logits(reference, full)
    sizes = model_sizes(tiny_model)
    slots = 4 if layout == "spread" else sizes.n_layers * sizes.n_expert // 2  # whole: half the layers held
    share = 0.5 if layout.endswith("_pcie") else 0.0
    cfg = config(tiny_model, slots, miss_mode=mode, cpu_threads=2, prefetch_depth=1 if mode == "auto" else 0,
                 prefetch_engine=prefetch_engine, slot_layout=layout.removesuffix("_pcie"),
                 pcie_share=share)
    e = Engine(tiny_model, device=DEVICE, kernels="triton", cache_config=cfg)
    got = _forced_logits(e, full)
    assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() >= 0.999
    assert (got.argmax(1) == want.argmax(1)).sum() >= steps - 1
    stats = e.cache_stats()
    read = stats["zero_copy_bytes"] // sizes.expert_bytes  # by the device, over PCIe
    assert stats["cpu_experts"] > 0 and (read > 0) == (share > 0)
    assert stats["cpu_experts"] + stats["served_by_prefetch"] + read == stats["misses"]

"""The expert cache's statistics: hits and misses counted on the device, the host's totals,
and what reached VRAM over PCIe (``Engine.cache_stats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autotune.cache_runtime.expert_cache import ExpertCache


def cache_stats(cache: ExpertCache) -> dict:
    """Every statistic since the cache was built (waits for the work in flight first)."""
    cache.drain()
    c = cache.counters
    tokens = int(cache.decode_tokens.item())
    selections = tokens * cache.top_k
    hits_layer = cache.hits.cpu().numpy()
    misses = selections * cache.n_layers - int(hits_layer.sum())
    out = {
        "tokens": tokens,
        "top_k": cache.top_k,
        "hit_rate": float(hits_layer.sum() / max(selections * cache.n_layers, 1)),
        "hit_rate_per_layer": [round(float(h) / max(selections, 1), 4) for h in hits_layer],
        "slots_per_layer": list(cache.plan.slots),
        "lent_slots_per_layer": list(cache.plan.lent_slots),
        "lend_refusals": 0 if cache.lent is None else cache.lent.refusals,
        "seeded_from_learned_counts": cache.seeded,
        "rebalances": c.rebalances,
        "rebalance_bytes": c.rebalance_bytes,
        "admissions": c.admissions,
        "admission_bytes": c.admission_bytes,
        "prefill_bypass_batches": c.bypass_batches,
        "prefill_bypass_bytes": c.bypass_bytes,
        # the compute stream never waits for rebalance or admission copies (no event is
        # waited on there); prefetch joins at each step's end, whose cost shows in tg128
        "host_wait_s": round(c.host_wait_s, 6),
    }
    prefetch = cache.prefetcher.stats() if cache.prefetcher is not None else {}
    from_prefetch = prefetch.get("served", 0)
    cpu = cache.cpu_misses.counters if cache.cpu_misses is not None else None
    # misses neither prefetched nor computed on the CPU are read over PCIe (with the CPU computing
    # misses: only its ``pcie_share``)
    zero_copy = max(0, misses - from_prefetch - (0 if cpu is None else cpu.experts)) * cache.expert_bytes
    copied = c.rebalance_bytes + c.admission_bytes + prefetch.get("copied", 0) * cache.expert_bytes
    out.update(
        misses=misses,
        served_by_prefetch=from_prefetch,
        effective_hit_rate=float((int(hits_layer.sum()) + from_prefetch) / max(selections * cache.n_layers, 1)),
        zero_copy_bytes=zero_copy,
        copy_bytes=copied,
        pcie_bytes_per_token=(zero_copy + copied) / max(tokens, 1),
        prefetch_precision=prefetch.get("precision"),
        prefetch_recall=prefetch.get("recall"),
        prediction_overlap=prefetch.get("overlap"),
        prefetch_late=prefetch.get("late"),
        # DMA: the claims' tag reads while copies were in flight (about a microsecond each),
        # and the claims that gave up on one (its expert read home, its copy wasted)
        claim_spins=prefetch.get("claim_spins"),
        claims_given_up=prefetch.get("claims_given_up"),
        # the CPU's channel (miss modes cpu and auto): selections it computed, the expert bytes
        # it read from RAM for them, the host's waits for each layer's router output and its
        # time computing
        cpu_experts=0 if cpu is None else cpu.experts,
        cpu_experts_per_token=0.0 if cpu is None else cpu.experts / max(tokens, 1),
        ram_bytes_per_token=0.0 if cpu is None else cpu.bytes / max(tokens, 1),
        cpu_wait_s=0.0 if cpu is None else round(cpu.wait_s, 6),
        cpu_compute_s=0.0 if cpu is None else round(cpu.compute_s, 6),
    )
    return out

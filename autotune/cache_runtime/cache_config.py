"""The expert cache's knobs: what the tuner's ``cache`` backend searches and ``serve`` runs.

One flat, JSON-serialisable record (the tuner stores configs as dicts: ``asdict`` /
``CacheConfig.from_dict``). ``vram_cap`` is the whole process's budget; the runtime turns
what is left after weights that always stay resident, KV cache, buffers and the CUDA
context into expert slots per layer (``slot_split`` shifts slots towards layers whose
routing is flatter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

EVICTION_RULES = ("lfu_decay", "lru", "static")
MISS_MODES = ("zero_copy", "copy")
PREFETCH_ENGINES = ("sm", "dma")
CHUNK_ROUNDS = (1, 2, 4)
GATE_UP_WARPS = (2, 4, 8, 16)


@dataclass(frozen=True)
class CacheConfig:
    vram_cap: int  # bytes for the whole process, CUDA context included
    rebalance_interval: int = 64  # tokens between hot-set recomputations; 0: never
    decay: float = 0.95  # per-rebalance decay of routing counts (lfu_decay)
    eviction: str = "lfu_decay"  # one of EVICTION_RULES
    miss_mode: str = "zero_copy"  # read a missing expert from pinned host memory, or copy it in
    prefetch_depth: int = 0  # layers ahead whose experts are predicted and brought in
    # who copies them: copy programs inside the decode step ("sm"), or the DMA engines, queued by
    # a host thread ("dma"), which slow the compute beside them far less
    prefetch_engine: str = "sm"
    prefill_bypass: int = 32  # batches of at least this many tokens skip the cache; 0: never
    # prompt tokens per prefill pass: the budget holds one pass's activations (0.49 GiB at 2048
    # for qwen3-30b-a3b), so fewer leave more room for slots, and prefill streams experts more often
    prefill_chunk: int = 2048
    # between prefills, that room (the pass's activations and the bypass's staging area) holds
    # more slots, emptied before each prefill and filled again after it
    lend_prefill_room: bool = False
    slot_split: float = 0.0  # 0: equal slots per layer; 1: slots in proportion to routing entropy
    learned_placement: bool = True  # seed the placement from the routing counts of earlier runs
    # a placement file (``learned.write_placement``): the counts a tuner's winner ran with; they
    # seed the placement unless the user's own saved counts cover more (``learned.seed_counts``)
    placement: str = ""
    max_ctx: int = 4096
    # decode launch shapes (triton_ops): the 12 GiB cap measured faster with 1 and 8 than with
    # the full-residency winner 2 and 4 (studies/expert_cache, run 6)
    chunk_rounds: int = 2  # load rounds per warp per GEMV chunk: 1, 2 or 4
    gate_up_warps: int = 4  # warps per gate-up program: 2, 4, 8 or 16

    def __post_init__(self) -> None:
        if self.eviction not in EVICTION_RULES:
            raise ValueError(f"eviction must be one of {EVICTION_RULES}, not {self.eviction!r}")
        if self.miss_mode not in MISS_MODES:
            raise ValueError(f"miss_mode must be one of {MISS_MODES}, not {self.miss_mode!r}")
        if self.prefetch_engine not in PREFETCH_ENGINES:
            raise ValueError(f"prefetch_engine must be one of {PREFETCH_ENGINES}, not {self.prefetch_engine!r}")
        if not 0.0 <= self.slot_split <= 1.0:
            raise ValueError(f"slot_split must be within [0, 1], not {self.slot_split}")
        if min(self.rebalance_interval, self.prefetch_depth, self.prefill_bypass) < 0:
            raise ValueError("rebalance_interval, prefetch_depth and prefill_bypass must be >= 0")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, not {self.prefill_chunk}")
        if self.chunk_rounds not in CHUNK_ROUNDS:
            raise ValueError(f"chunk_rounds must be one of {CHUNK_ROUNDS}, not {self.chunk_rounds}")
        if self.gate_up_warps not in GATE_UP_WARPS:
            raise ValueError(f"gate_up_warps must be one of {GATE_UP_WARPS}, not {self.gate_up_warps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CacheConfig":
        """Ignores keys that are not knobs (a tuner config may carry others)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

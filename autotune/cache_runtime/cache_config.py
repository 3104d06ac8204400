"""The expert cache's knobs (``CACHE_KNOBS``): what the runtime runs, the tuner's ``cache``
backend searches and ``autotune serve`` takes as flags, all from this one table.

A config is one flat, JSON-serialisable record (the tuner stores configs as dicts: ``to_dict``
/ ``CacheConfig.from_dict``). ``vram_cap`` is the whole process's budget; the runtime turns
what is left after weights that always stay resident, KV cache, buffers and the CUDA context
into expert slots per layer (``slot_layout`` spreads them over every layer or holds whole
layers; ``slot_split`` shifts a spread towards layers whose routing is flatter).

Knobs a choice makes moot (``When``): ``static`` eviction never moves an expert, so it has no
rebalancing or decay; the CPU's threads and layout, and the share of its misses the GPU reads
over PCIe, matter only where the CPU computes misses, and prefetch not where it computes every
miss (``cpu``); decay only weighs ``lfu_decay`` counts; the slot split needs learned counts and
a spread, a placement file learned counts; the prefetch engine needs prefetch. The
searched values and ranges come from studies/expert_cache (the run named beside each).
"""

from __future__ import annotations

import os

import psutil

from autotune.knob_schema import Knob, KnobSchema, Search, when_all, when_in, when_positive, when_true

CPU_MISS_MODES = ("cpu", "auto")  # the miss modes that compute experts on the CPU (``cpu_misses``)
# one core is left to the process's own thread, which queues the GPU's work; the default differs
# between machines, so where the CPU computes nothing the knob is moot at 1, not at the default
DEFAULT_CPU_THREADS = max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) - 1)
CPU_THREAD_CHOICES = tuple(sorted({min(n, os.cpu_count() or 1) for n in (4, 8, 12, 16)} | {DEFAULT_CPU_THREADS}))

CACHE_KNOBS = KnobSchema("cache", (
    Knob("vram_cap", int, low=1, kind="size", help="bytes for the whole process, CUDA context included"),
    # not searched: the tuner's workload sets it
    Knob("max_ctx", int, 4096, "context size in tokens: the KV cache's length", low=1, flag="--ctx"),
    Knob("eviction", str, "lfu_decay", "which experts the cache keeps", choices=("lfu_decay", "lru", "static"),
         search=Search(values=("static", "lfu_decay", "lru"))),
    Knob("miss_mode", str, "zero_copy", "a missing expert: read from pinned host memory by the GPU (zero_copy), "
         "copied in (copy), computed on the CPU from host memory (cpu), or on the GPU where prefetched in time "
         "and else on the CPU (auto)",
         choices=("zero_copy", "copy", "cpu", "auto"), search=Search()),  # static + cpu: llama.cpp's split, learned
    Knob("cpu_threads", int, DEFAULT_CPU_THREADS, "threads computing missed experts on the CPU", low=1,
         search=Search(values=CPU_THREAD_CHOICES), when=when_in("miss_mode", *CPU_MISS_MODES), moot=1),
    Knob("cpu_repack", bool, False, "compute missed experts from a copy of the stacks in ggml's repacked layout "
         "(Q4_K on x86; the same bytes again in RAM) rather than in place",
         search=Search(values=(False, True)), when=when_in("miss_mode", *CPU_MISS_MODES)),
    # both channels at once: where a layer's misses go to the CPU, the GPU reads a share of them
    # over PCIe meanwhile, so the CPU computes fewer (studies/hybrid, the 30B shape at skew 0)
    Knob("pcie_share", float, 0.0, "of each decode layer's misses the CPU would compute, the share the GPU reads "
         "from host memory over PCIe (zero-copy) while the CPU computes the rest", low=0.0, high=1.0,
         search=Search(values=(0.0, 0.25, 0.375, 0.5)), when=when_in("miss_mode", *CPU_MISS_MODES)),
    # depth 4 with DMA copies was the best at 12 GiB (run 7)
    Knob("prefetch_depth", int, 0, "layers ahead whose experts are predicted and prefetched", low=0,
         search=Search(low=0, high=4), when=when_in("miss_mode", "zero_copy", "copy", "auto")),
    Knob("prefetch_engine", str, "sm", "who copies prefetched experts: copy programs in the decode step (sm), "
         "or the DMA engines, queued by a host thread (dma), which slow the compute beside them far less",
         choices=("sm", "dma"), search=Search(), when=when_positive("prefetch_depth")),
    Knob("rebalance_interval", int, 64, "tokens between hot-set recomputations; 0: never", low=0,
         # 4 and 8: slots that follow each request's routing (studies/hybrid, the policy simulation)
         search=Search(values=(4, 8, 16, 32, 64, 128, 256)), when=when_in("eviction", "lfu_decay", "lru"), moot=0),
    Knob("decay", float, 0.95, "decay of routing counts per rebalance", low=0.0, high=1.0,
         search=Search(values=(0.5, 0.8, 0.9, 0.95, 0.99)), when=when_in("eviction", "lfu_decay")),
    Knob("learned_placement", bool, True, "seed the placement from the routing counts of earlier runs",
         search=Search(values=(True, False))),
    # whole layers: where routing is flat, a spread of slots leaves a few misses in every layer and
    # the CPU a call of fixed cost in each (studies/hybrid, the 30B shape at skew 0)
    Knob("slot_layout", str, "spread", "expert slots in every layer (spread), or whole layers held, the last "
         "first, and the first layers' experts left to the misses, as llama.cpp's --n-cpu-moe splits (whole_layers)",
         choices=("spread", "whole_layers"), search=Search()),
    Knob("slot_split", float, 0.0, "0: equal expert slots per layer .. 1: in proportion to routing entropy",
         low=0.0, high=1.0, search=Search(low=0.0, high=1.0, step=0.25),
         when=when_all(when_true("learned_placement"), when_in("slot_layout", "spread"))),
    # not searched: a winner's stored config names the file its trials' counts were frozen in
    Knob("placement", str, "", "routing counts that seed which experts start in VRAM (a file `autotune run` "
         "writes for its winner); this machine's own saved counts replace them once they cover more",
         kind="path", when=when_true("learned_placement")),
    Knob("lend_prefill_room", bool, False, "between prefills, fill the prefill's VRAM (its activations and the "
         "bypass's staging area) with more experts, emptied before each prefill",
         search=Search(values=(False, True))),
    # the decode kernels' launch shapes (triton_ops): the 12 GiB cap measured faster with 1 and 8
    # than with the full-residency winner 2 and 4 (run 6)
    Knob("chunk_rounds", int, 2, "decode kernels: load rounds per warp per GEMV chunk", choices=(1, 2, 4),
         search=Search(values=(1, 2)), gpu_only=True),
    Knob("gate_up_warps", int, 4, "decode kernels: warps per gate-up program", choices=(2, 4, 8, 16),
         search=Search(values=(4, 8)), gpu_only=True),
    # the experts' decode kernels on 8-bit inputs (triton_int8): its first version measured faster
    # on gpt-oss-20b's MXFP4 experts (+17%) and slower on every 2048- and 4096-wide file
    # (studies/families, 2026-12-08); its tiles were reworked since (studies/quant_types)
    Knob("int8_inputs", bool, False, "decode kernels: the experts' inputs rounded to 8-bit blocks, as "
         "llama.cpp's MMVQ does", search=Search(values=(False, True)), gpu_only=True),
    # decode never bypasses: searched for prefill-heavy objectives only
    Knob("prefill_bypass", int, 32, "batches of at least this many tokens skip the cache; 0: never", low=0,
         search=Search(values=(0, 8, 32, 128, 512), objectives=("prefill", "request"))),
    # not searched: a smaller chunk always wins decode, at a cost to prefill that a decode
    # objective does not see (run 10); the budget holds one pass's activations (0.49 GiB at
    # 2048 for qwen3-30b-a3b)
    Knob("prefill_chunk", int, 2048, "prompt tokens per prefill pass; fewer leave more VRAM for experts",
         low=1),
    # cpu_handoff chose between one graph that waits on the host's flags and a chain of graphs
    # cut at each handoff; the flags decoded 24% faster (studies/hybrid, call 10) and the chain
    # is gone
), retired=frozenset({"cpu_handoff"}))

CacheConfig = CACHE_KNOBS.record("CacheConfig", __name__, "The expert cache's knobs (``CACHE_KNOBS``), checked.")

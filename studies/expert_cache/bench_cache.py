"""The expert cache on the GPU machine: decode, prefill, peak VRAM and exactness per setting.

Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
  python3 studies/expert_cache/bench_cache.py reference MODEL OUT_DIR
  python3 studies/expert_cache/bench_cache.py cache MODEL OUT_DIR [--caps 16 12] [--only NAME ...]

``reference``: the runtime at full residency (every weight in VRAM): the greedy tokens of a
fixed prompt (32 steps), tg128 and pp512, and the routing counts of its decode tokens, saved
as the learned placement the cache settings start from (AUTOTUNE_DATA_DIR points the store
into OUT_DIR). ``cache``: one load (experts pinned in host memory), then for each cap and
setting a re-configured cache: greedy tokens against the reference, tg128 (median of 5: the
same sequence from token 1 each time, which a cache learns), decode after a random 512-token
prompt of each repetition's own (median of 3: what a served request sees), pp512 and pp2048, peak VRAM of the process (pynvml, sampled every 5 ms; the CUDA context
included) and the cache's statistics. Every setting writes its own JSON, failed or not;
``cache.json`` gathers them and a table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from autotune.cache_runtime.budget import GIB, model_sizes, plan_vram
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.learned import load_counts, save_counts
from autotune.studies.token_bound import measure_bandwidths, token_bound

PROMPT = np.random.default_rng(7).integers(0, 151936, 16).tolist()
LEARN_PROMPT = np.random.default_rng(8).integers(0, 151936, 16).tolist()
GREEDY_STEPS = 32
LEARN_STEPS = 512  # decode tokens whose routing the reference saves as the learned placement

# name -> knobs (besides vram_cap); learned placement on unless said otherwise. DEFAULT runs
# per cap; the others on --only.
SETTINGS = {
    "static_zc": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0, prefetch_depth=0),
    "static_zc_pf1": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0, prefetch_depth=1),
    "static_zc_pf2": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0, prefetch_depth=2),
    "lfu64_zc": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=64, prefetch_depth=0),
    "lfu64_zc_pf1": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=64, prefetch_depth=1),
    "lfu64_copy": dict(miss_mode="copy", eviction="lfu_decay", rebalance_interval=64, prefetch_depth=0),
    "lru64_copy_pf1": dict(miss_mode="copy", eviction="lru", rebalance_interval=64, prefetch_depth=1),
    "cold_lfu64_zc": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=64, prefetch_depth=0,
                          learned_placement=False),
    "split1_static_zc_pf1": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0,
                                 prefetch_depth=1, slot_split=1.0),
    "lfu16_zc": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=0),
    "lfu16_zc_pf1": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=1),
    "lfu16_zc_pf2": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=2),
    "lfu16_zc_pf3": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=3),
    "lfu16_zc_pf4": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=4),
    "static_zc_pf3": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0, prefetch_depth=3),
    "split1_lfu16_zc_pf2": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16,
                                prefetch_depth=2, slot_split=1.0),
    # prefetch copies by the DMA engines, queued by a host thread (copy_interference: they slow
    # the kernels beside them 7%, the SM copy programs up to 2x)
    "static_zc_pf3_dma": dict(miss_mode="zero_copy", eviction="static", rebalance_interval=0, prefetch_depth=3,
                              prefetch_engine="dma"),
    # LFU every 16 tokens, DMA prefetch at depths 2 to 8 (past 4, a copy gets more layers to land)
    **{f"lfu16_zc_pf{depth}_dma": dict(miss_mode="zero_copy", eviction="lfu_decay", rebalance_interval=16,
                                       prefetch_depth=depth, prefetch_engine="dma") for depth in (2, 3, 4, 5, 6, 8)},
    # issue 27: the CPU computes the misses (ggml over the pinned home stacks; cpu_threads: the
    # knob's default unless a _t suffix says); static is llama.cpp's split with learned placement
    "static_cpu": dict(miss_mode="cpu", eviction="static", rebalance_interval=0, prefetch_depth=0),
    "lfu16_cpu": dict(miss_mode="cpu", eviction="lfu_decay", rebalance_interval=16, prefetch_depth=0),
    "lfu64_cpu": dict(miss_mode="cpu", eviction="lfu_decay", rebalance_interval=64, prefetch_depth=0),
    # slots that follow each request (studies/hybrid's policy simulation: 0.84-0.88 hits where
    # every 16 tokens gives 0.73 on served-like requests)
    "lfu4_cpu": dict(miss_mode="cpu", eviction="lfu_decay", rebalance_interval=4, decay=0.8, prefetch_depth=0),
    # prefetched in time: the GPU computes it from the ring; else the CPU
    **{f"lfu16_auto_pf{depth}": dict(miss_mode="auto", eviction="lfu_decay", rebalance_interval=16,
                                     prefetch_depth=depth) for depth in (1, 2, 3)},
    **{f"lfu16_auto_pf{depth}_dma": dict(miss_mode="auto", eviction="lfu_decay", rebalance_interval=16,
                                         prefetch_depth=depth, prefetch_engine="dma") for depth in (2, 4)},
    # slots that follow each request, and the misses prefetched in time computed on the GPU
    **{f"lfu4_auto_pf{depth}{engine}": dict(miss_mode="auto", eviction="lfu_decay", rebalance_interval=4, decay=0.8,
                                            prefetch_depth=depth, prefetch_engine=engine[1:] or "sm")
       for depth in (1, 2, 3, 4) for engine in ("", "_dma")},
}
# bench-only variants: suffixes on a setting's name (any number, in any order), each setting one
# of the prefetch constants (prefetch.py's, triton_prefetch.py's) ...
CONSTANT_VARIANTS = {"_cp4": ("COPY_PROGRAMS", 4), "_cp32": ("COPY_PROGRAMS", 32),  # SM copy programs per matrix
                     "_w64": ("CLAIM_WAIT_SPINS", 64), "_w256": ("CLAIM_WAIT_SPINS", 256),  # DMA claim's wait
                     "_w1k": ("CLAIM_WAIT_SPINS", 1024),
                     "_w4k": ("CLAIM_WAIT_SPINS", 4096),
                     "_hp": ("SIDE_STREAM_PRIORITY", -1),  # the prediction stream at high priority
                     # experts one rebalance may copy: 2x and 4x the default (slots that follow
                     # each request hit 0.875 with 4x where the default allows 0.843: studies/hybrid)
                     "_rb2x": ("REBALANCE_BYTES", 2 * 512 * 2**20), "_rb4x": ("REBALANCE_BYTES", 4 * 512 * 2**20)}
# ... or cache knobs: launch shapes (1 load round per chunk, 8 gate-up warps: the shapes before
# run 6), slots split by routing entropy, prefill chunks of 512 or 1024 tokens (less room for
# activations, more for slots), prefill's room lent to slots between prefills
KNOB_VARIANTS = {"_r1w8": dict(chunk_rounds=1, gate_up_warps=8), "_split1": dict(slot_split=1.0),
                 "_chunk512": dict(prefill_chunk=512), "_chunk1k": dict(prefill_chunk=1024),
                 "_lend": dict(lend_prefill_room=True),
                 # the CPU miss modes' threads and ggml's repacked layout
                 **{f"_t{n}": dict(cpu_threads=n) for n in (4, 8, 12, 14, 15, 16)}, "_repack": dict(cpu_repack=True),
                 # slots as whole layers, the first layers' experts left to the misses (flat routing)
                 "_whole": dict(slot_layout="whole_layers"),
                 # a share of each layer's misses read by the GPU over PCIe beside the CPU
                 **{f"_pcie{name}": dict(pcie_share=share)
                    for name, share in (("25", 0.25), ("375", 0.375), ("50", 0.5), ("625", 0.625))}}
# profile a few decode steps per setting (decode_timeline). The profiler stays hooked into the
# process: DMA settings after the first profiled one decode ~45% slower (run 9), so profile one
# DMA setting per process
TIMELINE = bool(os.environ.get("TIMELINE"))
PROMPTED_PREFILL = 512  # prompt tokens before each prompted decode (served requests' default length)


def parse_name(name: str) -> tuple[str, dict, dict[str, int]]:
    """A setting's name -> (its base setting, its knobs, the prefetch constants its variants set)."""
    knobs, constants = {}, {}
    stripped = True
    while stripped:
        stripped = False
        for suffix, (constant, value) in CONSTANT_VARIANTS.items():
            if name.endswith(suffix):
                name, constants[constant], stripped = name.removesuffix(suffix), value, True
        for suffix, values in KNOB_VARIANTS.items():
            if name.endswith(suffix):
                name, stripped = name.removesuffix(suffix), True
                knobs.update(values)
    return name, {**SETTINGS.get(name, {}), **knobs}, constants


def constant_modules() -> dict:
    """Each constant's module (the side stream's priority: prefetch.py's; the copy programs and
    the claim's wait: triton_prefetch.py's; the rebalance budget: placement.py's)."""
    from autotune.cache_runtime import placement, prefetch, triton_prefetch

    return {"COPY_PROGRAMS": triton_prefetch, "CLAIM_WAIT_SPINS": triton_prefetch, "SIDE_STREAM_PRIORITY": prefetch,
            "REBALANCE_BYTES": placement}


def apply_constants(constants: dict[str, int], defaults: dict[str, int]) -> None:
    """Set the prefetch constants: the variant's values, else the defaults."""
    modules = constant_modules()
    for constant, value in {**defaults, **constants}.items():
        setattr(modules[constant], constant, value)


DEFAULT = ["static_zc", "static_zc_pf1", "static_zc_pf2", "lfu64_zc", "lfu64_zc_pf1", "lfu64_copy", "cold_lfu64_zc"]


def synced(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_tps(engine: Engine, n: int, reps: int) -> list[float]:
    """Decode speed from token 1 at position 0, the same sequence every repetition: a cache
    learns that sequence, so this reads higher than a served request (``prompted_decode_tps``)."""
    def run():
        engine.reset()
        engine.decode(1)
        for _ in range(n - 1):
            engine.decode()

    run()  # capture
    return [n / synced(run) for _ in range(reps)]


def prompted_decode_tps(engine: Engine, n: int, reps: int, prompt_len: int = PROMPTED_PREFILL) -> list[float]:
    """Decode speed as a served request sees it: each repetition prefills a random prompt of
    its own (not timed), then decodes ``n`` tokens from there."""
    rng = np.random.default_rng(prompt_len)
    prompts = [rng.integers(0, engine.cfg.n_vocab, prompt_len).tolist() for _ in range(reps + 1)]

    def run(prompt: list[int]) -> float:
        engine.start(prompt)
        return (n - 1) / synced(lambda: [engine.decode() for _ in range(n - 1)])

    run(prompts[0])  # capture
    return [run(prompt) for prompt in prompts[1:]]


def prefill_tps(engine: Engine, n: int, reps: int) -> list[float]:
    tokens = np.random.default_rng(n).integers(0, engine.cfg.n_vocab, n).tolist()

    def run():
        engine.reset()
        engine.prefill(tokens)

    run()
    return [n / synced(run) for _ in range(reps)]


def decode_timeline(engine: Engine, keep: Path | None = None, steps: int = 4) -> dict:
    """Where a decode step's time goes, per CUDA stream: kernels and copies of ``steps``
    graph replays (after 8 unprofiled ones), from the profiler's trace: per stream the busy
    time per step and the kernels that take it, and the step's wall time. ``keep``: where to
    save the device events (gzipped JSON) for a closer look."""
    import gzip
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    engine.reset()
    engine.decode(1)
    for _ in range(8):
        engine.decode()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.decode()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    events = [e for e in trace.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not events:
        return {"error": "no device events in the trace"}
    if keep is not None:
        with gzip.open(keep, "wt") as f:
            json.dump(events, f)
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e["dur"] for e in events)
    streams: dict = {}
    for e in events:
        row = streams.setdefault(str(e.get("args", {}).get("stream", "?")), {"n": 0, "busy_us": 0.0, "kernels": {}})
        row["n"] += 1
        row["busy_us"] += e["dur"]
        name = e["name"][:60]
        row["kernels"][name] = row["kernels"].get(name, 0.0) + e["dur"]
    for row in streams.values():
        row["n"] = row["n"] / steps
        row["busy_us"] = round(row["busy_us"] / steps, 1)
        top = sorted(row["kernels"].items(), key=lambda kv: -kv[1])[:10]
        row["kernels"] = {k: round(v / steps, 1) for k, v in top}
    return {"steps": steps, "step_us": round((end - start) / steps, 1), "streams": streams}


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 1), "samples": [round(s, 1) for s in samples]}


class PeakVram:
    """This process's GPU memory as the driver counts it (context included), sampled."""

    def __init__(self, interval_s: float = 0.005):
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        self.pid = os.getpid()
        self.peak = 0
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def used(self) -> int:
        for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if proc.pid == self.pid:
                return int(proc.usedGpuMemory or 0)
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.interval_s)

    def reset(self) -> None:
        self.peak = self.used()

    def stop(self) -> None:
        self._stop.set()


def reference(model: str, out: Path) -> None:
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    start = time.perf_counter()
    engine = Engine(model)
    result["load_s"] = round(time.perf_counter() - start, 1)
    result["greedy_tokens"] = engine.generate(PROMPT, GREEDY_STEPS)
    engine.trace.enabled = True  # another sequence than the measured ones
    engine.generate(LEARN_PROMPT, LEARN_STEPS)
    engine.trace.enabled = False
    result["routing_tokens"] = int(engine.trace.ids().shape[0])
    result["learned_counts"] = str(save_counts(engine.fingerprint, engine.trace.counts()))
    result["decode_tg128"] = summary(decode_tps(engine, 128, 5))
    result["prefill_pp512"] = summary(prefill_tps(engine, 512, 3))
    result["prefill_pp2048"] = summary(prefill_tps(engine, 2048, 2))
    result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    if TIMELINE:
        result["timeline"] = decode_timeline(engine, out / "timeline_full.json.gz")
    (out / "reference.json").write_text(json.dumps(result, indent=1))
    print("reference", {k: v for k, v in result.items() if k != "greedy_tokens"}, flush=True)


class Phases:
    """Per phase of a setting: seconds, and peaks of the driver's count (pynvml) and of torch's
    allocated and reserved bytes, each reset at the phase's start."""

    def __init__(self, vram: PeakVram):
        self.vram, self.rows = vram, {}

    def run(self, name: str, fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.vram.reset()
        start = time.perf_counter()
        value = fn()
        torch.cuda.synchronize()
        time.sleep(0.02)
        self.rows[name] = {"s": round(time.perf_counter() - start, 2), "nvml_gib": round(self.vram.peak / GIB, 3),
                           "allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
                           "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)}
        return value


def configure(engine: Engine, cfg: CacheConfig, profile_to: Path | None) -> None:
    if profile_to is None:
        engine.configure_cache(cfg)
        return
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(engine.configure_cache, cfg)
    with profile_to.open("w") as f:
        pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(30)


def run_setting(engine: Engine, cfg: CacheConfig, ref_tokens: list[int] | None, vram: PeakVram,
                counts: np.ndarray | None, profile_to: Path | None = None, timeline_to: Path | None = None) -> dict:
    row: dict = {"config": cfg.to_dict()}
    plan = plan_vram(model_sizes(engine.path), cfg, counts if cfg.learned_placement else None)
    row["predicted_peak_gib"] = round(plan.peak / GIB, 3)
    row["plan_gib"] = {k: round(v / GIB, 3) for k, v in plan.summary().items()
                       if isinstance(v, int) and k not in ("expert_bytes", "total_slots")}
    engine.close()
    phases = Phases(vram)
    phases.run("configure", lambda: configure(engine, cfg, profile_to))
    tokens = phases.run("greedy", lambda: engine.generate(PROMPT, GREEDY_STEPS))
    row["greedy_tokens"] = tokens
    row["tokens_match_full_residency"] = None if ref_tokens is None else tokens == ref_tokens
    row["decode_tg128"] = summary(phases.run("tg128", lambda: decode_tps(engine, 128, 5)))
    stats_decode = engine.cache_stats()
    row["decode_prompted"] = summary(phases.run("prompted", lambda: prompted_decode_tps(engine, 128, 3)))
    if TIMELINE:
        row["timeline"] = decode_timeline(engine, timeline_to)
    row["prefill_pp512"] = summary(phases.run("pp512", lambda: prefill_tps(engine, 512, 3)))
    row["prefill_pp2048"] = summary(phases.run("pp2048", lambda: prefill_tps(engine, 2048, 2)))
    row["phases"] = phases.rows
    row["peak_vram_gib"] = max(p["nvml_gib"] for p in phases.rows.values())
    row["peak_reserved_gib"] = max(p["reserved_gib"] for p in phases.rows.values())
    row["within_cap"] = row["peak_vram_gib"] * GIB <= cfg.vram_cap
    row["stats_after_decode"] = stats_decode
    row["stats"] = engine.cache_stats()
    return row


def cache(model: str, out: Path, caps: list[float], only: list[str] | None) -> None:
    ref_path = out / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    ref_tokens = ref.get("greedy_tokens")
    names = only or DEFAULT
    first = CacheConfig(vram_cap=int(caps[0] * GIB), **parse_name(names[0])[1])
    vram = PeakVram()
    start = time.perf_counter()
    engine = Engine(model, cache_config=first)
    engine.persist_routing = False  # every setting starts from the reference's counts
    load_s = round(time.perf_counter() - start, 1)
    sizes = model_sizes(model)
    counts = load_counts(engine.fingerprint, (sizes.n_layers, sizes.n_expert))
    print(f"loaded in {load_s} s; learned counts: {counts is not None}; peak so far "
          f"{vram.peak / GIB:.2f} GiB", flush=True)
    bandwidths = measure_bandwidths(os.cpu_count() or 1)
    print(f"bandwidths (GB/s): {({k: round(v / 1e9, 1) for k, v in asdict(bandwidths).items()})}", flush=True)
    dense_bytes = sizes.resident_bytes - engine.weights.token_embd.data.numel()  # a token reads one embedding row
    rows = []
    (out / "settings").mkdir(exist_ok=True)
    modules = constant_modules()
    defaults = {constant: getattr(modules[constant], constant) for constant, _ in CONSTANT_VARIANTS.values()}
    for cap in caps:
        for name in names:
            _, knobs, constants = parse_name(name)
            apply_constants(constants, defaults)
            cfg = CacheConfig(vram_cap=int(cap * GIB), **knobs)
            profile_to = out / "configure_profile.txt" if not rows else None
            try:
                row = run_setting(engine, cfg, ref_tokens, vram, counts, profile_to,
                                  out / f"timeline_cap{cap:g}_{name}.json.gz")
            except Exception as exc:  # noqa: BLE001 - every setting reports, failed or not
                row = {"config": cfg.to_dict(), "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-3000:]}
            row.update(cap_gib=cap, name=name, load_s=load_s)
            if "error" not in row:
                row["token_bound"] = token_bound(row["stats_after_decode"], sizes.expert_bytes, dense_bytes,
                                                 1 / row["decode_tg128"]["median"], bandwidths)
            rows.append(row)
            (out / "settings" / f"cap{cap:g}_{name}.json").write_text(json.dumps(row, indent=1))
            (out / "cache.json").write_text(json.dumps({"reference": ref, "settings": rows}, indent=1))
            print_row(row, ref)
    vram.stop()
    print_table(rows, ref)


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_row(row: dict, ref: dict) -> None:
    if "error" in row:
        print(f"cap {row['cap_gib']:g} {row['name']}: FAILED {row['error']}", flush=True)
        return
    s = row["stats_after_decode"]
    print(f"cap {row['cap_gib']:g} {row['name']}: tg128 {row['decode_tg128']['median']} tok/s "
          f"(after a {PROMPTED_PREFILL}-token prompt of its own: {row['decode_prompted']['median']}), "
          f"pp512 {row['prefill_pp512']['median']}, pp2048 {row['prefill_pp2048']['median']}, "
          f"peak {row['peak_vram_gib']} GiB (predicted {row['predicted_peak_gib']}), "
          f"slots {sum(s['slots_per_layer'])} + {sum(s['lent_slots_per_layer'])} lent "
          f"({row['stats']['lend_refusals']} refused), hit {s['hit_rate']:.3f} (with prefetch {s['effective_hit_rate']:.3f}), PCIe {s['pcie_bytes_per_token'] / 1e6:.1f} MB/token, "
          f"prefetch P/R {_fmt(s['prefetch_precision'], 2)}/{_fmt(s['prefetch_recall'], 2)}"
          + (f" (late {s['prefetch_late']}, claims given up {s['claims_given_up']}, "
             f"tag reads {s['claim_spins']})" if s.get("prefetch_late") is not None else "") + ", "
          + (f"CPU {s['cpu_experts_per_token']:.1f} experts/token, RAM {s['ram_bytes_per_token'] / 1e6:.1f} MB/token, "
             f"host waited {s['cpu_wait_s']:.2f} s, computed {s['cpu_compute_s']:.2f} s, " if s['cpu_experts'] else "")
          + f"tokens match {row['tokens_match_full_residency']}", flush=True)
    bound = row["token_bound"]
    megabytes = {k: round(v / 1e6, 1) for k, v in bound["bytes_per_token"].items()}
    print(f"  per token: MB {megabytes}, bound ms {bound['bound_ms']}, measured "
          f"{bound['measured_ms']} ms = {bound['of_overlapped_bound']:.0%} of the overlapped bound, "
          f"{bound['of_serial_bound']:.0%} of the serial", flush=True)


def print_table(rows: list[dict], ref: dict) -> None:
    full = ref.get("decode_tg128", {}).get("median")
    print(f"\nfull residency: tg128 {full} tok/s, pp512 {ref.get('prefill_pp512', {}).get('median')}, "
          f"pp2048 {ref.get('prefill_pp2048', {}).get('median')}")
    head = ["cap", "setting", "tg128", "of full", "pp512", "pp2048", "peak GiB", "<=cap", "hit", "+pf", "MB/tok",
            "pf P", "pf R", "same"]
    print(" | ".join(head))
    for row in rows:
        if "error" in row:
            print(f"{row['cap_gib']:g} | {row['name']} | FAILED: {row['error'][:100]}")
            continue
        s = row["stats_after_decode"]
        tg = row["decode_tg128"]["median"]
        print(" | ".join([f"{row['cap_gib']:g}", row["name"], f"{tg}", _fmt(tg / full if full else None, 2),
                          f"{row['prefill_pp512']['median']}", f"{row['prefill_pp2048']['median']}",
                          f"{row['peak_vram_gib']}", str(row["within_cap"]), f"{s['hit_rate']:.3f}",
                          f"{s['effective_hit_rate']:.3f}",
                          f"{s['pcie_bytes_per_token'] / 1e6:.1f}", _fmt(s["prefetch_precision"], 2),
                          _fmt(s["prefetch_recall"], 2), str(row["tokens_match_full_residency"])]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["reference", "cache"])
    parser.add_argument("model")
    parser.add_argument("out_dir")
    parser.add_argument("--caps", type=float, nargs="+", default=[16.0, 12.0])
    parser.add_argument("--only", nargs="*", default=None, help=f"setting names (default: {' '.join(DEFAULT)})")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTOTUNE_DATA_DIR", str(out / "data"))
    unknown = {parse_name(n)[0] for n in args.only or []} - set(SETTINGS)
    if unknown:
        sys.exit(f"unknown settings {unknown}; known: {list(SETTINGS)}, with suffixes "
                 f"{list(CONSTANT_VARIANTS) + list(KNOB_VARIANTS)}")
    with torch.inference_mode():
        if args.mode == "reference":
            reference(args.model, out)
        else:
            cache(args.model, out, args.caps, args.only)


if __name__ == "__main__":
    main()

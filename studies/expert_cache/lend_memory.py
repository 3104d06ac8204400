"""What pins the lent slots' room after a prefill (GPU machine): the allocator's segments.

Usage (project root, after `source .gpu/device-setup.sh`):
  python3 studies/expert_cache/lend_memory.py MODEL OUT.json [--cap 12] [--chunk 2048]

One engine at the cap with ``lend_prefill_room`` (the bench's ``lfu16_zc_pf6_dma_lend``, no
learned placement), torch's allocation history recorded. After a decode and after each of
pp512, pp2048, pp2048, pp2048 it prints the process's VRAM as the driver counts it, the
allocator's reserved and allocated memory and the refusals so far, and lists every segment
holding more than 16 MiB unused: its size and the live blocks in it, each with the top frames
of where it was allocated. Those blocks are what keeps torch from giving the freed room back
(``cache_runtime/lent_slots.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from bench_cache import PeakVram  # this directory, where the script runs from

MIB = 2**20


def frames(block: dict, keep: int = 6) -> list[str]:
    """The allocation's innermost Python frames of this project or torch."""
    out = [f"{f['filename'].split('site-packages/')[-1]}:{f['line']} {f['name']}" for f in block.get("frames", [])
           if f["filename"].endswith(".py")]
    return out[:keep]


def segments_with_room(unused_min: int = 16 * MIB) -> list[dict]:
    found = []
    for seg in torch.cuda.memory._snapshot()["segments"]:
        live = [b for b in seg["blocks"] if b["state"] == "active_allocated"]
        unused = seg["total_size"] - sum(b["size"] for b in live)
        if unused >= unused_min:
            found.append({"segment_mib": round(seg["total_size"] / MIB, 1), "unused_mib": round(unused / MIB, 1),
                          "pool": str(seg.get("segment_pool_id")),
                          "live": [{"mib": round(b["size"] / MIB, 3), "frames": frames(b)} for b in live]})
    return found


def state(engine: Engine, vram: PeakVram, phase: str) -> dict:
    """``vram.used()``: the process's VRAM now, as the bench's driver count reads it."""
    torch.cuda.synchronize()
    lent = engine.expert_cache.lent
    row = {"phase": phase, "nvml_gib": round(vram.used() / 2**30, 3),
           "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3),
           "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
           "lent_allocated": lent.buffer is not None, "refusals": lent.refusals,
           "segments_with_room": segments_with_room()}
    print(json.dumps({k: v for k, v in row.items() if k != "segments_with_room"}), flush=True)
    for seg in row["segments_with_room"]:
        print(f"  segment {seg['segment_mib']} MiB, {seg['unused_mib']} unused, pool {seg['pool']}:", flush=True)
        for block in seg["live"]:
            print(f"    live {block['mib']} MiB  " + " <- ".join(block["frames"][:4]), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--cap", type=float, default=12)
    ap.add_argument("--chunk", type=int, default=2048, help="prefill_chunk")
    args = ap.parse_args()
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    cfg = CacheConfig(vram_cap=int(args.cap * 2**30), miss_mode="zero_copy", eviction="lfu_decay",
                      rebalance_interval=16, prefetch_depth=6, prefetch_engine="dma",
                      lend_prefill_room=True, learned_placement=False, prefill_chunk=args.chunk)
    engine = Engine(args.model, kernels="triton", cache_config=cfg)
    vram = PeakVram()
    rows = [state(engine, vram, "configured")]
    engine.generate(list(range(100, 140)), 32)  # 40 tokens: a bypassed prefill
    rows.append(state(engine, vram, "greedy 32 tokens"))
    for n in (512, 2048, 2048, 2048):
        engine.reset()
        engine.prefill(np.random.default_rng(n).integers(0, engine.cfg.n_vocab, n).tolist())
        rows.append(state(engine, vram, f"pp{n}"))
    vram.stop()
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

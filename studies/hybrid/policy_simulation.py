"""Which expert-cache policy keeps up with served requests: a cold cache on requests that each
prefill a random prompt of their own and then decode, with the 16 GiB cut's slots per layer.

A CPU study: the `routing-235b-small` preset (the Qwen3-235B-A22B cut's routing, 128 experts,
top-8, 20 layers, at a small width; temporal routing) runs the requests through the runtime on
the CPU, recording the routing trace; `autotune.studies.cache_simulation` then replays the
decode steps through each policy (the runtime's own policy code) at SLOTS of the 128 experts
per layer (987 of 2560 at the 235B cut's 16 GiB cap). Prints the hit rate per policy and
budget of swaps per rebalance, and two oracles: each request's own best static set, and the
best static set over the whole trace.

Usage: python studies/hybrid/policy_simulation.py MODEL.gguf [--requests 5] [--prompt 256] [--gen 128]
(MODEL.gguf is written with `autotune synth MODEL.gguf --preset routing-235b-small` if missing.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from autotune.cache_runtime.engine import Engine
from autotune.studies.cache_simulation import SimulatedCache, simulate
from autotune.synth import write_synthetic_model

SLOTS = 49  # of 128 per layer: the 235B cut's 987 of 2560 at 16 GiB
SWAP_BUDGETS = (43, 172, 688, 10**6)  # per rebalance; 43: the runtime's REBALANCE_BYTES at that shape
POLICIES = [("lfu_decay", interval, decay) for interval in (4, 16, 64) for decay in (0.5, 0.8, 0.95)] + \
           [("lru", interval, 0.95) for interval in (4, 16, 64)]


def static_oracle(ids: np.ndarray, slots: int) -> float:
    """Hits of the best static set per layer over ``ids`` (steps, layers, k)."""
    n_expert = int(ids.max()) + 1
    hits = sum(np.sort(np.bincount(ids[:, layer].ravel(), minlength=n_expert))[-slots:].sum()
               for layer in range(ids.shape[1]))
    return hits / ids.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=128)
    args = parser.parse_args()
    if not args.model.exists():
        write_synthetic_model(args.model, preset="routing-235b-small", seed=0)
    torch.set_num_threads(2)
    engine = Engine(args.model, device="cpu", max_ctx=args.prompt + args.gen + 8)
    engine.trace.enabled = True
    rng = np.random.default_rng(1)
    for _ in range(args.requests):
        engine.generate(rng.integers(0, engine.cfg.n_vocab, args.prompt).tolist(), args.gen)
    trace = engine.recorded_trace()
    ids = trace.decode_ids().astype(np.int64)
    print(f"{len(ids)} decode steps of {args.requests} requests; {SLOTS} of {trace.n_expert} slots per layer")
    slots = (SLOTS,) * trace.n_layers
    for rule, interval, decay in POLICIES:
        rates = [simulate(trace, SimulatedCache(slots, rule, "cpu", interval, decay, budget)).hit_rate
                 for budget in SWAP_BUDGETS]
        print(f"{rule:9s} every {interval:2d} decay {decay:.2f}: " +
              "  ".join(f"{budget if budget < 10**6 else 'any'} swaps {rate:.3f}" for budget, rate in zip(SWAP_BUDGETS, rates)))
    steps = len(ids) // args.requests
    per_request = np.mean([static_oracle(ids[r * steps:(r + 1) * steps], SLOTS) for r in range(args.requests)])
    print(f"each request's own best static set: {per_request:.3f}; the whole trace's: {static_oracle(ids, SLOTS):.3f}")


if __name__ == "__main__":
    main()

"""Where served decode loses to the harness: one engine, one config, the same random prompts,
decoded two ways in one process (diagnosis, not a bar):

- ``main``: ``Engine.start`` / ``decode`` on the main thread, as the harness decodes;
- ``session``: through the server's ``Session`` (its engine thread, an event loop taking each
  token), as ``autotune serve`` decodes a request, without HTTP.

``--load-on main`` loads the engine on the main thread (as ``autotune serve`` did before
``Session.load``), ``--load-on engine`` on the session's engine thread (as it does now). For
each way: decode tok/s (first token to last), and per decoded token the CPU experts' compute
and wait (``/v1/stats``'s ``cpu_compute_s``, ``cpu_wait_s``) and the experts computed.

Usage: python studies/hybrid/served_gap.py MODEL CAP_GIB [--load-on main|engine] [--reps 3]
       [--device cpu] [KNOB=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
import torch

from autotune.cache_runtime.cache_config import CACHE_KNOBS, CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.serve.session import Sampling, Session

GIB = 2**30
N_PROMPT, N_GEN = 512, 128


def _cpu_totals(engine: Engine) -> tuple[float, float, int, int]:
    stats = engine.cache_stats()
    return stats["cpu_compute_s"], stats["cpu_wait_s"], stats["cpu_experts"], stats["tokens"]


def _report(mode: str, rates: list[float], before: tuple, after: tuple) -> None:
    compute, wait, experts, tokens = (a - b for a, b in zip(after, before))
    tokens = max(tokens, 1)
    print(f"{mode:>18}: decode {statistics.median(rates):6.1f} tok/s ({', '.join(f'{r:.1f}' for r in rates)}); "
          f"per token: CPU compute {compute / tokens * 1e3:.2f} ms, wait {wait / tokens * 1e3:.2f} ms, "
          f"{experts / tokens:.1f} experts", flush=True)


def direct(engine: Engine, prompts: list[list[int]]) -> list[float]:
    rates = []
    for prompt in prompts:
        with torch.inference_mode():
            engine.start(prompt)  # ends in a sync (the first token's .item())
            start = time.perf_counter()
            for _ in range(N_GEN - 1):
                engine.decode()
            int(engine.token.item())
        rates.append((N_GEN - 1) / (time.perf_counter() - start))
    return rates


async def _one_request(session: Session, prompt: list[int]) -> float:
    stamps = []
    async for chunk in session.generate(prompt, Sampling(max_tokens=N_GEN, ignore_eos=True)):
        stamps.append(time.perf_counter())
    return (N_GEN - 1) / (stamps[-1] - stamps[0])


def through_session(session: Session, prompts: list[list[int]]) -> list[float]:
    async def run() -> list[float]:
        return [await _one_request(session, prompt) for prompt in prompts]
    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("cap_gib", type=float)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--load-on", choices=("main", "engine"), default="engine")
    parser.add_argument("--device", default=None, help="the engine's device (default: the GPU where there is one)")
    parser.add_argument("knobs", nargs="*", help="cache knobs as KEY=VALUE (default: LFU every 4, decay 0.8, cpu)")
    args = parser.parse_intermixed_args()
    knobs = {**dict(eviction="lfu_decay", rebalance_interval=4, decay=0.8, miss_mode="cpu"),
             **CACHE_KNOBS.read_assignments(args.knobs)}
    cfg = CacheConfig(vram_cap=int(args.cap_gib * GIB), **knobs)
    load = lambda: Engine(args.model, device=args.device, cache_config=cfg)  # noqa: E731
    if args.load_on == "engine":
        session = Session.load(load, "gap", {}, save_every=1e9)
        engine = session.engine
    else:
        engine = load()
        session = Session(engine, "gap", {}, save_every=1e9)
    engine.persist_routing = False
    rng = np.random.default_rng(0)
    prompts = lambda: [rng.integers(0, engine.cfg.n_vocab, N_PROMPT).tolist() for _ in range(args.reps)]  # noqa: E731
    print(f"engine loaded on the {args.load_on} thread; {engine.device}", flush=True)
    through_session(session, prompts()[:1])  # captures the graphs
    for mode in ("session", "main", "session"):
        before = _cpu_totals(engine)
        rates = through_session(session, prompts()) if mode == "session" else direct(engine, prompts())
        _report(mode, rates, before, _cpu_totals(engine))
    session.close()

if __name__ == "__main__":
    main()

"""Child side of the ``cache`` backend: load the model once, then measure cache configs.

Only trial children (``autotune.backends.worker``) import this module, and torch with it.
``setup`` loads the runtime with the first config's expert cache; ``run`` re-configures the
cache for its config (no reload), then measures as llama-bench's tests do: decode of N
tokens from a fresh sequence (a start token, then each step's greedy token fed back) r
times after one warm-up run (which captures the decode graph on a GPU), the cache's
statistics of those decode runs, and prefill of P tokens r times after a warm-up run. The
tokens are seeded, so every config sees the same sequences, and every config starts from the
same learned routing counts: trials never save theirs (benchmark traffic would otherwise
reshape the placement of the trials after it, and of the user's next ``autotune serve``).
Where the user has no counts for the model yet, trials use counts learned from decode of a
prompt no measurement uses (``learn_placement``), so learned placement is measured as a
returning user gets it; the first child to need them learns them into the trials' own store
(``trial_store``), and later children (of this study and the next) read them from there.
Peak VRAM is sampled by the parent (``isolation``).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import platformdirs
import torch

from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.learned import DATA_DIR_ENV, load_counts

STATS = ("hit_rate", "effective_hit_rate", "pcie_bytes_per_token", "prefetch_precision", "prefetch_recall",
         "rebalances", "host_wait_s", "misses", "admissions")


LEARN_PROMPT_TOKENS, LEARN_TOKENS = 16, 256  # the decode whose routing seeds a first placement
TRIAL_STORE_ENV = "AUTOTUNE_TRIAL_STORE"


@dataclass
class Loaded:
    engine: Engine
    config: CacheConfig  # what the cache is configured with now


def trial_store() -> Path:
    """Where trials keep the routing counts they learn (``$AUTOTUNE_TRIAL_STORE``, else the user
    cache dir), apart from the user's store. The seeded decode gives a model the same counts
    in every child (the runtime's tokens do not depend on the cache), so one learning serves all."""
    return Path(os.environ.get(TRIAL_STORE_ENV) or platformdirs.user_cache_dir("autotune", appauthor=False)) / "trials"


def learn_placement(engine: Engine, config: CacheConfig) -> str:
    """Start the placement from routing counts, and say whose: the user's where stored (used as
    they are), else the trials' store's, learned first where it has none (decode of a seeded
    prompt no measurement uses). The user's store is never written."""
    shape = (engine.cfg.n_layers, engine.cfg.n_expert)
    if load_counts(engine.fingerprint, shape) is not None:
        return "the user's"
    os.environ[DATA_DIR_ENV] = str(trial_store())
    source = "learned by an earlier trial"
    if load_counts(engine.fingerprint, shape) is None:
        rng = random.Random(f"learn {engine.fingerprint}")
        prompt = [rng.randrange(engine.cfg.n_vocab) for _ in range(LEARN_PROMPT_TOKENS)]
        engine.generate(prompt, min(LEARN_TOKENS, engine.cache.max_ctx - LEARN_PROMPT_TOKENS))
        engine.save_routing()
        source = "learned in the trial"
    engine.configure_cache(config)
    return source


def setup(common: dict[str, Any]) -> tuple[Loaded, dict[str, Any]]:
    """Load the model: ``common`` has model_path and the first item's config."""
    config = CacheConfig.from_dict(common["config"])
    started = time.perf_counter()
    engine = Engine(common["model_path"], cache=config)
    engine.persist_routing = False
    loaded = time.perf_counter()
    routing_counts = learn_placement(engine, config)
    done = time.perf_counter()
    info = {"load_seconds": done - started,
            "extra": {"device": str(engine.device), "kernels": type(engine.ops).__name__,
                      "routing_counts": routing_counts,
                      "model_load_seconds": loaded - started, "placement_seconds": done - loaded}}
    return Loaded(engine, config), info


def _timed(engine: Engine, run: Callable[[], None]) -> float:
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(engine.device)
    started = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - started


def decode_tps(engine: Engine, n_gen: int, repetitions: int) -> list[float]:
    """Tokens per second of ``n_gen`` decode steps from a fresh sequence, per repetition."""
    start_tokens = [random.Random(rep).randrange(engine.cfg.n_vocab) for rep in range(repetitions)]

    def run(token: int) -> None:
        engine.reset()
        engine.decode(token)
        for _ in range(n_gen - 1):
            engine.decode()

    run(start_tokens[0])  # warm-up (and the graph's capture)
    return [n_gen / _timed(engine, lambda: run(token)) for token in start_tokens]


def prefill_tps(engine: Engine, n_prompt: int, repetitions: int) -> list[float]:
    rng = random.Random(n_prompt)
    tokens = [rng.randrange(engine.cfg.n_vocab) for _ in range(n_prompt)]

    def run() -> None:
        engine.reset()
        engine.prefill(tokens)

    run()
    return [n_prompt / _timed(engine, run) for _ in range(repetitions)]


def run(loaded: Loaded, item: dict[str, Any]) -> dict[str, Any]:
    """Measure one config (``item["config"]``) for ``item["workload"]``."""
    config, workload = CacheConfig.from_dict(item["config"]), item["workload"]
    started = time.perf_counter()
    if config != loaded.config:
        loaded.engine.configure_cache(config)
        loaded.config = config
    configure_seconds = time.perf_counter() - started
    engine = loaded.engine
    decode = decode_tps(engine, workload["n_gen"], workload["repetitions"]) if workload["n_gen"] else []
    stats = engine.cache_stats()
    prefill = prefill_tps(engine, workload["n_prompt"], workload["repetitions"]) if workload["n_prompt"] else []
    plan = engine.expert_cache.plan
    extra = {key: stats.get(key) for key in STATS}
    extra.update(total_slots=sum(plan.slots), slots_per_layer=list(plan.slots), planned_peak_bytes=plan.peak,
                 configure_seconds=configure_seconds)
    return {"decode_tps": decode, "prefill_tps": prefill, "extra": extra}

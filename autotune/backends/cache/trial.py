"""Child side of the ``cache`` backend: load the model once, then measure cache configs.

Only trial children (``autotune.isolation.child_main``) import this module, and torch with it.
``setup`` loads the runtime with the first config's expert cache; ``run`` re-configures the
cache for its config (no reload), then measures requests as ``autotune serve`` runs them, one
after the other as they would arrive: prefill of the request's prompt (timed: prefill tok/s),
then decode of N tokens with each token read back to the host (as a server must, to stop at an
end token: decode tok/s), after one warm-up request with the first prompt (which captures the
decode graph on a GPU); and the cache's statistics of those requests. The prompts are the
workload's token ids (``Workload.trial_inputs``: request i is prompt i mod their number), else
seeded random tokens, so every config sees the same sequences; and every config starts from
the same routing counts (``cache_placement``): trials never save theirs (benchmark traffic
would otherwise reshape the placement of the trials after it, and of the user's next
``autotune serve``). Where neither the user nor the trial store has counts for the model yet,
the child learns them first (``learn_placement``). A routing trace named with the workload
(``workload["trace"]``) is for the runtime to replay in place of its router; the runtime does
not replay traces yet, so it is carried, not used. Peak VRAM is sampled by the parent
(``isolation``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotune.backends.cache.winner_placement import trial_placement_path, with_trial_placement
from autotune.cache_runtime.cache_config import CacheConfig
from autotune.cache_runtime.engine import Engine
from autotune.cache_runtime.learned import load_counts, model_fingerprint, write_placement

STATS = ("hit_rate", "effective_hit_rate", "pcie_bytes_per_token", "prefetch_precision", "prefetch_recall",
         "rebalances", "host_wait_s", "misses", "admissions",
         "cpu_experts_per_token", "ram_bytes_per_token")  # the last two: experts the CPU computed (miss_mode cpu/auto)


LEARN_PROMPT_TOKENS, LEARN_TOKENS = 16, 256  # the decode whose routing seeds a first placement
LEARNED_HERE = "learned in the trial"


@dataclass
class Loaded:
    engine: Engine
    config: CacheConfig  # what the cache is configured with now


def trial_config(fingerprint: str, config: dict[str, Any]) -> CacheConfig:
    """The config as trials run it: naming the trials' placement file (``cache_placement``)."""
    return CacheConfig.from_dict(with_trial_placement(config, fingerprint))


def learn_placement(engine: Engine) -> str:
    """Make sure there are counts to seed from, and say whose: the user's where stored, else
    the trial store's, learned first where it has none (decode of a seeded prompt no
    measurement uses, written to the trials' placement file). The user's store is never written."""
    shape = (engine.cfg.n_moe_layers, engine.cfg.n_expert)
    if load_counts(engine.fingerprint, shape) is not None:
        return "the user's"
    path = trial_placement_path(engine.fingerprint)
    if path.exists():
        return "learned by an earlier trial"
    rng = random.Random(f"learn {engine.fingerprint}")
    prompt = [rng.randrange(engine.cfg.n_vocab) for _ in range(LEARN_PROMPT_TOKENS)]
    engine.generate(prompt, min(LEARN_TOKENS, engine.kv_cache.max_ctx - LEARN_PROMPT_TOKENS))
    engine.expert_cache.drain()
    write_placement(path, engine.expert_cache.routing.total, engine.fingerprint, "learned by a trial")
    return LEARNED_HERE


def setup(common: dict[str, Any]) -> tuple[Loaded, dict[str, Any]]:
    """Load the model: ``common`` has model_path and the first item's config."""
    started = time.perf_counter()
    config = trial_config(model_fingerprint(common["model_path"]), common["config"])
    engine = Engine(common["model_path"], cache_config=config)
    engine.persist_routing = False
    loaded = time.perf_counter()
    routing_counts = learn_placement(engine)
    if routing_counts == LEARNED_HERE:  # placed before there were counts: again, by them
        config = trial_config(engine.fingerprint, common["config"])
        engine.configure_cache(config)
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


def request_prompts(engine: Engine, workload: dict[str, Any]) -> list[list[int]]:
    """Each request's prompt: the workload's, else ``n_prompt`` seeded random tokens per request."""
    if workload["prompts"]:
        return workload["prompts"]
    return [[rng.randrange(engine.cfg.n_vocab) for _ in range(max(1, workload["n_prompt"]))]
            for rng in (random.Random(f"decode {rep}") for rep in range(workload["repetitions"]))]


def measure_requests(engine: Engine, prompts: list[list[int]], n_gen: int) -> tuple[list[float], list[float]]:
    """Prefill and decode tokens per second of one request per prompt, after a warm-up request:
    prefill of the prompt (its first token chosen), then ``n_gen`` decode steps, each token read
    back to the host as a server reads it."""

    def steps() -> None:
        for _ in range(n_gen):
            engine.decode()
            engine.token.item()  # the host waits for each token, as a server does

    def request(prompt: list[int]) -> tuple[float, float | None]:
        prefill_s = _timed(engine, lambda: engine.start(prompt))
        return len(prompt) / prefill_s, (n_gen / _timed(engine, steps) if n_gen else None)

    request(prompts[0])  # warm-up (and the graph's capture)
    measured = [request(prompt) for prompt in prompts]
    return [prefill for prefill, _ in measured], [decode for _, decode in measured if decode is not None]


def run(loaded: Loaded, item: dict[str, Any]) -> dict[str, Any]:
    """Measure one config (``item["config"]``) for ``item["workload"]``."""
    config, workload = trial_config(loaded.engine.fingerprint, item["config"]), item["workload"]
    started = time.perf_counter()
    if config != loaded.config:
        loaded.engine.configure_cache(config)
        loaded.config = config
    configure_seconds = time.perf_counter() - started
    engine = loaded.engine
    prompts = request_prompts(engine, workload)
    prefill, decode = measure_requests(engine, prompts, workload["n_gen"])
    stats = engine.cache_stats()
    plan = engine.expert_cache.plan
    extra = {key: stats.get(key) for key in STATS}
    extra.update(total_slots=sum(plan.slots), slots_per_layer=list(plan.slots), planned_peak_bytes=plan.peak,
                 configure_seconds=configure_seconds, request_prompt_tokens=list(map(len, prompts)))
    return {"decode_tps": decode, "prefill_tps": prefill, "extra": extra}

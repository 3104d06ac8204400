"""The runtime's entry point: load a GGUF, prefill, decode, generate, trace routing.

    engine = Engine("model.gguf")              # CUDA + Triton kernels when there is a GPU
    logits = engine.prefill(tokens)            # (vocab,) logits of the last prompt token
    tokens = engine.generate(prompt, 32)       # greedy; temperature=... samples
    engine.trace.enabled = True                # then engine.trace.ids() / .counts()
    write_trace("t.npz", engine.recorded_trace())  # trace_file's: to replay later
    engine = Engine("model.gguf", replay=read_trace("t.npz"))  # the trace's experts, not the router's
    text = engine.complete("Once upon", 16)    # through the GGUF's tokenizer (llama_cpp)

    engine = Engine("model.gguf", cache_config=CacheConfig(vram_cap=16 * 2**30))  # the expert cache
    engine.cache_stats()                       # hit rate, PCIe bytes per token, prefetch, ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from pathlib import Path

import torch

from autotune.cache_runtime.cache_config import CPU_MISS_MODES, CacheConfig
from autotune.cache_runtime.devices import Device
from autotune.cache_runtime.families import family_for
from autotune.cache_runtime.graph import DecodeGraph, HostServedDecodeGraph
from autotune.cache_runtime.kv_cache import KVCache
from autotune.cache_runtime.ops import FULL_RESIDENCY
from autotune.cache_runtime.platforms import select_platform
from autotune.cache_runtime.rope import RopeTable
from autotune.cache_runtime.routing import RoutingTrace
from autotune.cache_runtime.sampling import greedy, gumbel_sample
from autotune.cache_runtime.support import CPU_ACTIVATIONS
from autotune.cache_runtime.trace_file import Phase, Trace
from autotune.cache_runtime.weights import LayerWeights, ModelWeights, load_weights
from autotune.errors import AutotuneError


def experts_on_host(weights: ModelWeights, device: Device) -> ModelWeights:
    """Every weight on ``device`` except the routed experts (the ``*_exps`` stacks), which stay
    in host memory: pinned for a GPU (its kernels read them there), the file's memory map for
    the CPU. Shared experts and dense FFNs go to the device with the other weights."""
    expert_fields = tuple(f.name for f in dataclasses.fields(LayerWeights) if f.name.endswith("_exps"))
    experts = {(il, name): getattr(layer, name) for il, layer in enumerate(weights.layers) for name in expert_fields
               if getattr(layer, name) is not None}
    homes = device.host_copies([q.data for q in experts.values()])
    experts = {key: type(q)(data, q.qtype, q.cols) for (key, q), data in zip(experts.items(), homes)}
    dev = device.torch_device

    def placed(il: int, name: str, value):
        if (il, name) in experts:
            return experts[(il, name)]
        return None if value is None else value.to(dev)

    layers = [type(layer)(**{f.name: placed(il, f.name, getattr(layer, f.name)) for f in dataclasses.fields(layer)})
              for il, layer in enumerate(weights.layers)]
    return ModelWeights(weights.config, weights.token_embd.to(dev), layers, weights.output_norm.to(dev),
                        weights.output.to(dev))


class Engine:
    """One model, one sequence. ``device``: a torch device (the GPU where there is one);
    ``kernels``: "triton" (the GPU default) or "torch" (``platforms``).

    ``cache_config``: run with the expert cache (experts in host memory, the hottest in VRAM
    slots within ``cache_config.vram_cap``); the KV cache then holds ``cache_config.max_ctx``
    tokens, and prefill runs in passes of ``cache_config.prefill_chunk`` tokens
    (``prefill_chunk`` without an expert cache).

    ``replay``: a routing trace recorded on this model, whose experts every layer selects in
    place of the router's, token after token (``replay``).
    """

    def __init__(self, path: str | Path, device: str | None = None, max_ctx: int = 4096,
                 kernels: str | None = None, use_graph: bool = True, prefill_chunk: int = 2048,
                 cache_config: CacheConfig | None = None, replay: Trace | None = None):
        self.platform = select_platform(device, kernels)
        device = self.platform.device.torch_device
        self.path = Path(path)
        weights = load_weights(path)
        self.weights = weights.to(device) if cache_config is None else experts_on_host(weights, self.platform.device)
        # an engine whose experts went to the GPU's memory cannot take an expert cache later
        self._experts_in_vram = cache_config is None and not self.platform.device.is_host
        max_ctx = cache_config.max_ctx if cache_config is not None else max_ctx
        self.cfg = self.weights.config
        self.device = device
        self.forward = family_for(self.cfg.arch, self.path).forward  # (ops, tokens, start) -> logits, ids
        self.kv_cache = KVCache(self.cfg, max_ctx, device, self.platform.kernels.kv_dtype)
        self.rope = RopeTable(self.cfg, max_ctx, device)
        self.ops = self.platform.kernels.ops_class()(self.weights, self.kv_cache, self.rope)
        self.use_graph = use_graph and self.platform.captures_graphs
        self.prefill_chunk = prefill_chunk
        self.trace = RoutingTrace(self.cfg.n_moe_layers, self.cfg.n_expert)
        self.inv_temperature = torch.ones(1, device=device)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.n_past = 0
        self._graphs: dict[bool, DecodeGraph | HostServedDecodeGraph] = {}
        self._tokenizer = None
        self.expert_cache = None
        self.persist_routing = True  # close() saves the routing counts for the next start
        self._fingerprint: str | None = None
        self.placement_source = "no counts"  # whose routing counts seeded the expert cache's placement
        if replay is not None:
            self._replay(replay)
        if cache_config is not None:
            self.configure_cache(cache_config)

    # -- the expert cache ----------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from autotune.cache_runtime.learned import model_fingerprint

            self._fingerprint = model_fingerprint(self.path)
        return self._fingerprint

    def _replay(self, trace: Trace) -> None:
        from autotune.cache_runtime.replay import TraceReplay

        trace.check_model(self.fingerprint, self.cfg.n_moe_layers, self.cfg.n_expert, self.cfg.n_expert_used)
        if trace.n_tokens == 0:
            raise AutotuneError("the trace to replay holds no tokens")
        self.ops.routing = TraceReplay(trace, self.device, self.cfg)

    def recorded_trace(self) -> Trace:
        """What ``trace`` recorded so far, with this model's fingerprint (``trace_file``)."""
        return Trace(self.trace.ids(), self.trace.phases(), self.fingerprint, self.cfg.n_expert)

    def configure_cache(self, cfg: CacheConfig) -> None:
        """(Re)build the expert cache for ``cfg`` without reloading the model: the previous
        cache's routing counts are saved, its slots freed, new slots planned and filled."""
        from autotune.cache_runtime.budget import model_sizes, plan_vram
        from autotune.cache_runtime.expert_cache import ExpertCache
        from autotune.cache_runtime.learned import seed_counts

        if self._experts_in_vram:
            raise AutotuneError("this engine holds every expert in VRAM: load it with cache_config=... instead")
        if cfg.miss_mode in CPU_MISS_MODES and self.cfg.expert_act not in CPU_ACTIVATIONS:
            raise AutotuneError(f"miss mode {cfg.miss_mode!r} computes misses with ggml's CPU experts, which have no "
                                f"{self.cfg.expert_act} activation here ({self.cfg.arch}): use zero_copy or copy")
        if cfg.max_ctx != self.kv_cache.max_ctx:
            raise AutotuneError(f"max_ctx {cfg.max_ctx} differs from the loaded KV cache's {self.kv_cache.max_ctx}")
        self.close()
        self._graphs.clear()
        sizes = model_sizes(self.path)
        counts, self.placement_source = seed_counts(self.fingerprint, (sizes.n_layers, sizes.n_expert), cfg.placement) \
            if cfg.learned_placement else (None, "no counts (learned placement off)")
        plan = plan_vram(sizes, cfg, counts, kv_element_bytes=self.kv_cache.k.element_size())
        expert_cache = ExpertCache(self.ops, cfg, plan, self.platform.device, counts)
        if cfg.prefetch_depth and sum(plan.slots) < sizes.n_layers * sizes.n_expert:
            from autotune.cache_runtime.prefetch import Prefetcher

            expert_cache.prefetcher = Prefetcher(self.ops, expert_cache, cfg.prefetch_depth, cfg.prefetch_engine,
                                                 self.platform.kernels.ring_steps())
        self.expert_cache = expert_cache
        self.ops.hooks = expert_cache
        self.prefill_chunk = cfg.prefill_chunk  # the plan holds one chunk's activations
        self.ops.set_launch_shapes(cfg.chunk_rounds, cfg.gate_up_warps, cfg.int8_inputs)

    def save_routing(self) -> Path | None:
        """Persist the routing counts seen so far (they seed the next start's placement)."""
        from autotune.cache_runtime.learned import save_counts

        if self.expert_cache is None or self.expert_cache.routing.total.sum() == 0:
            return None
        self.expert_cache.drain()
        return save_counts(self.fingerprint, self.expert_cache.routing.total)

    def cache_stats(self) -> dict:
        """The expert cache's statistics since it was configured (empty without one)."""
        return {} if self.expert_cache is None else {**self.expert_cache.stats(), "placement_source": self.placement_source}

    def close(self) -> None:
        """Save the routing counts and drop the expert cache's VRAM (the engine keeps its model)."""
        expert_cache = self.expert_cache
        if expert_cache is None:
            return
        if self.persist_routing:
            self.save_routing()
        expert_cache.release()
        self.ops.hooks = FULL_RESIDENCY
        self.expert_cache = None
        self._graphs.clear()
        del expert_cache
        gc.collect()  # the cache and its prefetcher refer to each other: free their VRAM now
        self.platform.device.release_cached()

    def reset(self) -> None:
        """Start a new sequence (the KV cache is overwritten as it goes)."""
        self.n_past = 0
        self.kv_cache.pos.zero_()

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.kv_cache.max_ctx:
            raise ValueError(f"context full: {self.n_past} + {n} > {self.kv_cache.max_ctx} tokens")

    @torch.inference_mode()
    def prefill(self, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """Process prompt tokens; the last one's logits (vocab,) float32."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(-1)
        self._check_room(len(tokens))
        room_lent = self.expert_cache is not None and len(tokens) > 1
        if room_lent:
            self.expert_cache.before_prefill()
        try:
            for i, chunk in enumerate(tokens.split(self.prefill_chunk)):
                logits = self._prefill_pass(chunk, Phase.PREFILL if i else Phase.PREFILL_START)
        finally:
            if room_lent:
                self.expert_cache.after_prefill()
        self.kv_cache.pos.fill_(self.n_past)
        return logits

    def _prefill_pass(self, chunk: torch.Tensor, phase: Phase) -> torch.Tensor:
        """One pass of a prefill: the last token's logits. The pass's expert ids (6 MB at 2048
        tokens) die here: alive when the prefill's room is lent again, they would pin it."""
        self.kv_cache.pos.fill_(self.n_past)  # a one-token chunk runs the decode kernels
        if self.expert_cache is not None:
            self.expert_cache.begin_step()
        logits, ids = self.forward(self.ops, chunk, self.n_past)
        if self.expert_cache is not None:
            self.expert_cache.join()  # a one-token chunk may have forked prefetch work
        self.trace.record(ids, phase)
        self.n_past += len(chunk)
        return logits

    def _step(self, token: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step at kv_cache.pos: logits, selected experts, and the next token fed back."""
        if self.expert_cache is not None:
            self.expert_cache.begin_step()
        logits, ids = self.forward(self.ops, token, self.n_past)
        if self.expert_cache is not None:
            self.expert_cache.finish_step(ids)
        nxt = gumbel_sample(logits, self.inv_temperature) if sample else greedy(logits)
        token.copy_(nxt)
        self.kv_cache.pos.add_(1)
        return logits, ids, nxt

    @torch.inference_mode()
    def decode(self, token: int | torch.Tensor | None = None, sample: bool = False) -> torch.Tensor:
        """Decode one token (None: the one the previous step chose); its logits (vocab,).

        The chosen next token is left in ``self.token``. On the GPU this replays a captured
        graph and the logits are its static buffer: clone them to keep them past the next step.
        Where the host takes part in every layer (the CPU computes the cache's misses), the step
        is a chain of graphs with the host's part between them.
        """
        self._check_room(1)
        if token is not None:
            self.token.copy_(torch.as_tensor(token, device=self.device).reshape(1))
        if self.use_graph:
            graph = self._graphs.get(sample)
            if graph is None:
                graph = self._capture(sample)
            logits, ids, _ = graph.replay()
        else:
            logits, ids, _ = self._step(self.token, sample)
        if self.expert_cache is not None:
            self.expert_cache.after_step(ids)
        self.trace.record(ids, Phase.DECODE)
        self.n_past += 1
        return logits

    def _capture(self, sample: bool) -> DecodeGraph | HostServedDecodeGraph:
        """Capture the decode step; the warm-up steps leave the cache's counters (and a replay's
        cursor) as they were."""
        counters = self.expert_cache.device_counters() if self.expert_cache is not None else []
        counters = [*counters, *self.ops.routing.device_state()]
        saved = [c.clone() for c in counters]
        quiet = self.expert_cache.capturing() if self.expert_cache is not None else contextlib.nullcontext()
        step = lambda t: self._step(t, sample)  # noqa: E731
        with quiet:
            if self.expert_cache is not None and self.expert_cache.host_in_step:
                graph = HostServedDecodeGraph(step, self.token, self.kv_cache.pos, self.expert_cache.attach_host_actions)
            else:
                graph = DecodeGraph(step, self.token, self.kv_cache.pos)
        for c, s in zip(counters, saved):
            c.copy_(s)
        self._graphs[sample] = graph
        return graph

    @torch.inference_mode()
    def start(self, prompt: list[int], temperature: float = 0.0) -> int:
        """Begin a new sequence: prefill ``prompt`` and choose its first token (also left in
        ``self.token``); ``decode(sample=temperature > 0)`` continues it."""
        self.reset()
        if temperature > 0:
            self.inv_temperature.fill_(1.0 / temperature)
        logits = self.prefill(prompt)
        self.token.copy_(gumbel_sample(logits, self.inv_temperature) if temperature > 0 else greedy(logits))
        return int(self.token.item())

    @torch.inference_mode()
    def generate(self, prompt: list[int], n: int, temperature: float = 0.0) -> list[int]:
        """Prefill ``prompt`` (after a reset) and decode ``n`` new tokens; their ids."""
        sample = temperature > 0
        self.start(prompt, temperature)
        out = [self.token.clone()]
        for _ in range(n - 1):
            self.decode(sample=sample)
            out.append(self.token.clone())
        return [int(t) for t in torch.cat(out).tolist()]

    @property
    def tokenizer(self):
        """The GGUF's tokenizer (needs llama-cpp-python), loaded on first use."""
        if self._tokenizer is None:
            from autotune.cache_runtime.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.path)
        return self._tokenizer

    def complete(self, prompt: str, n: int, temperature: float = 0.0) -> str:
        """``n`` tokens of continuation of ``prompt``, as text."""
        return self.tokenizer.decode(self.generate(self.tokenizer.encode(prompt), n, temperature))

"""The contract between a model family's forward pass and the arithmetic that runs it.

A family (``families/``) is written once against ``Ops``; ``TorchOps`` (plain PyTorch, the
readable definition and the CPU path) and ``TritonOps`` (fused kernels, the GPU path)
implement it. Every member is declared here: the blocks every implementation provides, and
the optional capabilities with their defaults (the expert table, the expert cache's hooks,
launch shapes), so no caller probes an ops object for what it can do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

from autotune.cache_runtime.step_counts import PrefetchCounts, count_step

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.expert_table import ExpertTable
    from autotune.cache_runtime.kv_cache import KVCache
    from autotune.cache_runtime.rope import RopeTable
    from autotune.cache_runtime.weights import ModelWeights, QTensor


class ExpertHooks(ABC):
    """What the ops ask whoever manages where experts are (the expert cache, ``expert_cache``)."""

    @abstractmethod
    def resolve(self, layer: int, expert: int, like: tuple[QTensor, QTensor, QTensor]) -> tuple[QTensor, ...]:
        """The expert's gate, up and down matrices where its table entry points; ``like``: the
        layer's stacks (their types and widths)."""

    @abstractmethod
    def bypasses(self, n_tokens: int) -> bool:
        """Whether a batch of ``n_tokens`` reads the layer's experts from a staging area."""

    @abstractmethod
    def stage_layer(self, layer: int) -> None:
        """Copy the layer's non-resident experts into the staging area (before its experts run)."""

    @abstractmethod
    def unstage_layer(self, layer: int) -> None:
        """Point the staged experts home again (after the layer's experts ran)."""

    @abstractmethod
    def router_input(self, layer: int) -> torch.Tensor | None:
        """Where a decode step's router may save its input (None: not needed)."""

    @abstractmethod
    def after_router(self, layer: int, h: torch.Tensor, kept: bool = False) -> None:
        """The layer's router has run on ``h``; ``kept``: it saved ``h`` where ``router_input`` said."""

    @abstractmethod
    def offload(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """After the router: hand the selections the device will not compute to the CPU.

        ``x``: the experts' (normalized) input (tokens, n_embd); ``ids``, ``weights``: (tokens, k).
        Returns which selections the device computes, (tokens, k) bool on the device, or
        None: the device computes them all. The device's expert kernels skip the others, and
        ``add_offloaded`` then adds the CPU's share."""

    @abstractmethod
    def add_offloaded(self, layer: int, h: torch.Tensor) -> None:
        """Add the CPU's share of the layer's experts (after ``offload``) to ``h``, in place."""


class FullResidency(ExpertHooks):
    """No expert cache: every expert stays where the weights were loaded."""

    def resolve(self, layer: int, expert: int, like: tuple[QTensor, QTensor, QTensor]) -> tuple[QTensor, ...]:
        return tuple(m[expert] for m in like)

    def bypasses(self, n_tokens: int) -> bool:
        return False

    def stage_layer(self, layer: int) -> None:
        pass

    def unstage_layer(self, layer: int) -> None:
        pass

    def router_input(self, layer: int) -> torch.Tensor | None:
        return None

    def after_router(self, layer: int, h: torch.Tensor, kept: bool = False) -> None:
        pass

    def offload(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        return None

    def add_offloaded(self, layer: int, h: torch.Tensor) -> None:
        pass


FULL_RESIDENCY = FullResidency()


class RoutingHook(ABC):
    """What may replace the router's choice after each layer's router ran (``replay``)."""

    @abstractmethod
    def after_route(self, layer: int, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
        """May overwrite ``ids`` and ``weights`` (tokens, k) in place; ``logits`` (tokens, n_expert):
        the router's. Device work only (a captured decode step runs it)."""

    def device_state(self) -> list[torch.Tensor]:
        """Device tensors a decode step advances (the engine restores them after a capture's warm-up)."""
        return []


class OwnRouting(RoutingHook):
    """The router's choice stands."""

    def after_route(self, layer: int, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
        pass


OWN_ROUTING = OwnRouting()


class Ops(ABC):
    """Forward-pass blocks over hidden states ``h`` (tokens, n_embd) float32.

    ``hooks``: the expert cache when one manages where experts are (the engine sets and
    clears it), else ``FULL_RESIDENCY``. ``routing``: a recorded trace's choice in place of
    the router's (``replay.TraceReplay``, the engine's ``replay=``), else ``OWN_ROUTING``.
    """

    hooks: ExpertHooks = FULL_RESIDENCY
    routing: RoutingHook = OWN_ROUTING
    # True: the kernels read experts at the expert table's addresses; False: ``expert`` asks
    # ``hooks.resolve``, so the expert cache keeps a map of its storage for it
    kernels_read_table: ClassVar[bool] = False

    def __init__(self, weights: ModelWeights, kv_cache: KVCache, rope: RopeTable):
        self.w = weights
        self.cfg = weights.config
        self.kv_cache = kv_cache
        self.rope = rope
        # MLA layers' wk_b, wv_b dequantized on first use, in the KV cache's dtype (mla.absorbed)
        self.absorbed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @cached_property
    def experts_table(self) -> ExpertTable:
        """Every expert's addresses on the KV cache's device (built on first use): the expert
        cache keeps it current; kernels that ``kernels_read_table`` read experts through it."""
        from autotune.cache_runtime.expert_table import ExpertTable

        return ExpertTable(self.w.moe_layers, self.kv_cache.k.device)

    def set_launch_shapes(self, chunk_rounds: int, gate_up_warps: int, int8_inputs: bool) -> None:
        """A cache config's decode launch shapes and input rounding; ops without them ignore them."""

    def count_step(self, ids: torch.Tensor, in_slot: torch.Tensor, hits: torch.Tensor, tokens: torch.Tensor,
                   prefetch: PrefetchCounts | None) -> None:
        """Add a decode step's selections to the expert cache's device counters (``step_counts``)."""
        count_step(ids, in_slot, hits, tokens, prefetch, fused=False)

    # -- the blocks ----------------------------------------------------------------------

    @abstractmethod
    def linear(self, x: torch.Tensor, w: QTensor) -> torch.Tensor:
        """x @ W^T for a quantized W (rows = outputs)."""

    @abstractmethod
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens' embeddings (tokens, n_embd)."""

    @abstractmethod
    def attn_in(self, h: torch.Tensor, il: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RMSNorm, then the q, k, v projections."""

    @abstractmethod
    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Per-head q/k norm (where the family has it), RoPE, and k, v into the KV cache; the
        rotated q (tokens, heads, head_dim)."""

    @abstractmethod
    def attend(self, q: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Causal attention of q (positions start...) over the KV cache: (tokens, n_head * head_dim)."""

    @abstractmethod
    def latent_attend(self, q: torch.Tensor, kv: torch.Tensor, il: int, start: int) -> torch.Tensor:
        """Latent attention (MLA, ``mla``): the latent and RoPE key of ``kv`` (tokens,
        kv_lora_rank + rope_dims; the latent not yet normed) into the KV cache, then q's heads
        (tokens, n_head, head_dim) over it, the no-RoPE part absorbed through wk_b: the weighted
        latents (tokens, n_head, kv_lora_rank), in the cache's dtype."""

    @abstractmethod
    def out_proj(self, a: torch.Tensor, il: int, h: torch.Tensor) -> torch.Tensor:
        """h + attention output projection."""

    @abstractmethod
    def moe(self, h: torch.Tensor, il: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h + the routed experts of RMSNorm(h), plus the layer's shared expert where it has
        one; and the selected ids (tokens, k). The router's gate, selection bias,
        renormalization and scale are the model's (``routing.route_layer``); the hooks see
        the layer as the expert machinery numbers it (``ModelConfig.moe_layer``)."""

    @abstractmethod
    def dense_ffn(self, h: torch.Tensor, il: int) -> torch.Tensor:
        """h + the dense FFN of RMSNorm(h): a leading dense layer's (no experts)."""

    @abstractmethod
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (tokens, vocab)."""

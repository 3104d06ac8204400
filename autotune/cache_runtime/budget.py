"""The expert cache's VRAM budget: from a cap to expert slots per layer, and the peak it implies.

Pure arithmetic over the model's sizes (``ModelSizes``, read from the GGUF header alone), so the
tuner can predict a config's peak VRAM without loading anything (``predict_peak_vram``) and the
runtime allocates exactly what was predicted (``plan_vram``).

What the process holds on the GPU, besides expert slots:
- the CUDA context (``CONTEXT_BYTES``, measured on the GPU machine: about 0.5 GiB) and a margin
  for compiled kernels, cuBLAS workspaces and allocator slack (``MARGIN_BYTES``);
- every weight that is not a routed expert (attention, norms, routers, embedding, head, shared
  experts, the dense FFNs of leading dense layers);
- the KV cache for ``max_ctx`` tokens;
- activations of the largest prefill chunk (``activation_bytes``);
- the prefill-bypass staging area (the layer with the fewest slots must fit all its other
  experts) and the prefetch ring ((depth + 1) x top-k experts).

With ``lend_prefill_room`` the activations' and the staging area's room (less the activations'
slack for fragmentation) holds more slots (``lent_slots``) between prefills; they are emptied
before a prefill needs that room.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autotune.cache_runtime.cache_config import CacheConfig
from autotune.errors import AutotuneError

GIB = 2**30
CONTEXT_BYTES = 512 * 2**20
# H200 machine, qwen3-30b-a3b preset: the context and what torch does not allocate took 0.74
# GiB, the caching allocator's slack up to 0.33 GiB more in a 2048-token prefill; with 256 MiB
# the peak exceeded 16 and 12 GiB caps by 0.07 and 0.16 GiB (studies/expert_cache, run 3)
MARGIN_BYTES = 512 * 2**20
ACTIVATION_SLACK = 1.25  # the caching allocator's rounding and fragmentation
MLA_ABSORBED = (".attn_k_b.weight", ".attn_v_b.weight", ".attn_kv_b.weight")


@dataclass(frozen=True)
class ModelSizes:
    n_layers: int  # layers with routed experts (the cache's)
    n_expert: int
    n_expert_used: int
    n_embd: int
    n_ff_expert: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    expert_bytes: int  # gate + up + down of one expert
    resident_bytes: int  # every weight that is not a routed expert, as the runtime holds it
    largest_dense_elems: int  # rows x cols of the largest non-expert matrix (dequantized in prefill)
    n_dense_layers: int = 0  # leading layers with a dense FFN: attention and KV cache, no experts
    n_ff_resident: int = 0  # the widest always-resident FFN (a shared expert or a dense layer's)
    kv_token_elems: int = 0  # what the KV cache keeps of a token per layer (0: K and V of n_head_kv x head_dim)
    attended_elems: int = 0  # what attention reads per head and position (0: K and V of head_dim; MLA: more)


def activation_bytes(m: ModelSizes, chunk: int, max_ctx: int) -> int:
    """Peak temporaries of one prefill chunk of ``chunk`` tokens (decode needs far less).

    Attention reads the cache's keys and values repeated to every head, for every position
    up to the chunk's last: with a long prompt, the last chunk's reach ``max_ctx``."""
    q_dim, kv_dim = m.n_head * m.head_dim, m.n_head_kv * m.head_dim
    routed = m.n_expert_used * (m.n_ff_expert * (4 + 2) + m.n_embd * 4)  # hidden f32+f16, y f32
    routed += m.n_ff_resident * 4 * 3  # a shared expert's or dense FFN's gate, up and product, f32
    dense = m.n_embd * 4 * 4 + q_dim * (4 + 2 + 4) + kv_dim * 4 * 2  # h, x, norms; q; k, v
    per_token = routed + dense
    keys = m.n_head * max_ctx * (m.attended_elems or 2 * m.head_dim) * 2  # K and V repeated per head, f16
    mask = min(chunk, max_ctx) * max_ctx  # a chunk after the first attends through a bool mask
    return int(ACTIVATION_SLACK * (chunk * per_token + keys + mask + m.largest_dense_elems * 2 + m.n_vocab * 4))


def kv_bytes(m: ModelSizes, max_ctx: int, element_bytes: int = 2) -> int:
    per_token = m.kv_token_elems or 2 * m.n_head_kv * m.head_dim
    return (m.n_layers + m.n_dense_layers) * max_ctx * per_token * element_bytes


def entropies(counts: np.ndarray) -> np.ndarray:
    """Routing entropy (nats) of each layer from its (layers, experts) selection counts."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1e-12)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)


def split_slots(total: int, n_expert: int, weights: Sequence[float]) -> list[int]:
    """``total`` slots over layers in proportion to ``weights``, at most ``n_expert`` each.

    Water-filling: layers that hit the cap give their excess to the others; the last
    slots go by largest remainder (ties: lower layer first).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    total = min(max(total, 0), n * n_expert)
    if w.sum() <= 0:
        w = np.ones(n)
    slots = np.zeros(n, dtype=np.int64)
    capped = np.zeros(n, dtype=bool)
    ideal = np.zeros(n)
    while not capped.all():
        left = total - slots[capped].sum()
        share = np.where(capped, 0.0, w)
        if share.sum() <= 0:
            share = np.where(capped, 0.0, 1.0)
        ideal = left * share / share.sum()
        over = (~capped) & (ideal >= n_expert)
        if not over.any():
            break
        slots[over] = n_expert
        capped |= over
    base = np.floor(ideal).astype(np.int64)
    slots[~capped] = base[~capped]
    rest = total - slots.sum()
    order = sorted(np.flatnonzero(~capped), key=lambda i: (-(ideal[i] - base[i]), i))
    for i in order:
        if rest <= 0:
            break
        if slots[i] < n_expert:
            slots[i] += 1
            rest -= 1
    return [int(s) for s in slots]


def whole_layer_slots(total: int, n_layers: int, n_expert: int) -> list[int]:
    """``total`` slots as whole layers, the last layers first (llama.cpp's ``--n-cpu-moe N`` keeps
    the first N layers' experts off the GPU), the remainder in the layer before them."""
    total = min(max(total, 0), n_layers * n_expert)
    full, rest = divmod(total, n_expert)
    slots = [0] * n_layers
    for layer in range(n_layers - full, n_layers):
        slots[layer] = n_expert
    if rest:
        slots[n_layers - full - 1] = rest
    return slots


def layer_slots(total: int, m: ModelSizes, cfg: CacheConfig, weights: Sequence[float]) -> list[int]:
    """``total`` slots over layers as ``cfg.slot_layout`` places them."""
    if cfg.slot_layout == "whole_layers":
        return whole_layer_slots(total, m.n_layers, m.n_expert)
    return split_slots(total, m.n_expert, weights)


def layer_weights(n_layers: int, slot_split: float, counts: np.ndarray | None) -> list[float]:
    """Each layer's share: (1 - s) equal + s in proportion to routing entropy (equal without counts)."""
    equal = np.full(n_layers, 1.0 / n_layers)
    if counts is None or slot_split == 0 or np.asarray(counts).sum() == 0:
        return equal.tolist()
    h = entropies(counts)
    prop = h / h.sum() if h.sum() > 0 else equal
    return ((1 - slot_split) * equal + slot_split * prop).tolist()


@dataclass(frozen=True)
class VramPlan:
    cap: int
    context: int
    margin: int
    resident: int
    kv_cache: int
    activations: int
    staging: int  # prefill bypass: the non-resident experts of the emptiest layer
    prefetch_ring: int
    expert_bytes: int
    slots: tuple[int, ...]
    lent_slots: tuple[int, ...]  # more slots per layer between prefills (``lend_prefill_room``)

    @property
    def slot_bytes(self) -> int:
        return sum(self.slots) * self.expert_bytes

    @property
    def peak(self) -> int:
        """Predicted peak of the whole process, CUDA context included."""
        return (self.context + self.margin + self.resident + self.kv_cache + self.activations
                + self.staging + self.prefetch_ring + self.slot_bytes)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("slots", "lent_slots")}
        out.update(slots_per_layer=list(self.slots), total_slots=sum(self.slots),
                   lent_slots_per_layer=list(self.lent_slots), peak=self.peak)
        return out


def plan_with_slots(m: ModelSizes, cfg: CacheConfig, total: int, counts: np.ndarray | None = None, *,
                    kv_element_bytes: int = 2,
                    context: int = CONTEXT_BYTES, margin: int = MARGIN_BYTES) -> VramPlan:
    """The plan holding ``total`` expert slots (over layers as ``cfg.slot_layout`` and
    ``cfg.slot_split`` place them)."""
    all_slots = m.n_layers * m.n_expert
    weights = layer_weights(m.n_layers, cfg.slot_split, counts)
    slots = layer_slots(total, m, cfg, weights)
    full = total >= all_slots
    staging = 0 if full or cfg.prefill_bypass == 0 else (m.n_expert - min(slots)) * m.expert_bytes
    ring = 0 if full or cfg.prefetch_depth == 0 else (cfg.prefetch_depth + 1) * m.n_expert_used * m.expert_bytes
    activations = activation_bytes(m, cfg.prefill_chunk, cfg.max_ctx)
    lent = [0] * m.n_layers
    if cfg.lend_prefill_room and not full:
        # the activations' slack stays free: the allocator's fragmentation needs it (run 11)
        room = (int(activations / ACTIVATION_SLACK) + staging) // m.expert_bytes
        if cfg.slot_layout == "whole_layers":  # the next layers down, as whole as the room allows
            lent = [grown - s for grown, s in zip(whole_layer_slots(total + room, m.n_layers, m.n_expert), slots)]
        else:
            lent = [min(n, m.n_expert - s) for n, s in zip(split_slots(room, m.n_expert, weights), slots)]
    return VramPlan(cap=cfg.vram_cap, context=context, margin=margin, resident=m.resident_bytes,
                    kv_cache=kv_bytes(m, cfg.max_ctx, kv_element_bytes), activations=activations,
                    staging=staging, prefetch_ring=ring, expert_bytes=m.expert_bytes, slots=tuple(slots),
                    lent_slots=tuple(lent))


def plan_vram(m: ModelSizes, cfg: CacheConfig, counts: np.ndarray | None = None, **kwargs) -> VramPlan:
    """The most slots that fit ``cfg.vram_cap``; raises AutotuneError when not even zero do.

    ``kwargs``: as ``plan_with_slots``. Below full residency the peak grows with the slot
    count, so a bisection finds the largest total that fits.
    """
    def plan(total: int) -> VramPlan:
        return plan_with_slots(m, cfg, total, counts, **kwargs)

    all_slots = m.n_layers * m.n_expert
    if plan(all_slots).peak <= cfg.vram_cap:  # no staging or ring then: checked on its own
        return plan(all_slots)
    lo, hi = 0, all_slots - 1
    if plan(lo).peak > cfg.vram_cap:
        raise AutotuneError(f"a {cfg.vram_cap / GIB:.2f} GiB cap is below the cache runtime's fixed need "
                            f"of {plan(lo).peak / GIB:.2f} GiB for this model and context")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if plan(mid).peak <= cfg.vram_cap else (lo, mid - 1)
    return plan(lo)


def model_sizes(path: str | Path) -> ModelSizes:
    """The sizes ``plan_vram`` needs, from the GGUF header (no tensor data is read).

    Reading a header with a large vocabulary takes seconds, so the answer is kept per file
    (path, size and modification time): re-configuring a cache costs no second read."""
    stat = Path(path).stat()
    return _model_sizes(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _model_sizes(path: str, size: int, mtime_ns: int) -> ModelSizes:
    from autotune.cache_runtime.hparams import read_config
    from autotune.model_info import inspect_model

    cfg = read_config(path)
    # a file's NextN layers (after the ones the forward pass runs) are not loaded
    tensors = [t for t in inspect_model(path).tensors if _layer_of(t.name) < cfg.n_layers]
    experts = [t for t in tensors if t.name.endswith("_exps.weight") and ".ffn_" in t.name]
    dense = [t for t in tensors if t not in experts]
    if not experts:
        from autotune.errors import ModelFileError

        raise ModelFileError(f"{path}: not a mixture-of-experts model")
    expert_total = sum(t.nbytes for t in experts)
    # norms are held as float32 whatever their file type
    resident = sum(math.prod(t.shape) * 4 if len(t.shape) == 1 else t.nbytes for t in dense)
    # MLA's absorbed matrices are also held dequantized, float16 (``mla.absorbed``)
    resident += sum(math.prod(t.shape) * 2 for t in dense if t.name.endswith(MLA_ABSORBED))
    resident_ffn = [t.shape[1] for t in dense if t.name.endswith((".ffn_up_shexp.weight", ".ffn_up.weight"))]
    return ModelSizes(
        n_layers=cfg.n_moe_layers, n_expert=cfg.n_expert, n_expert_used=cfg.n_expert_used, n_embd=cfg.n_embd,
        n_ff_expert=cfg.n_ff_expert, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv, head_dim=cfg.head_dim,
        n_vocab=max(t.shape[1] for t in tensors if t.name == "token_embd.weight"),
        expert_bytes=expert_total // (cfg.n_moe_layers * cfg.n_expert), resident_bytes=resident,
        largest_dense_elems=max(math.prod(t.shape) for t in dense if len(t.shape) == 2 and
                                t.name not in ("token_embd.weight", "output.weight")),
        n_dense_layers=cfg.n_dense_lead, n_ff_resident=max(resident_ffn, default=0),
        kv_token_elems=cfg.kv_cache_dims[0] * sum(cfg.kv_cache_dims[1:]),
        # MLA: the latent and RoPE key, then the latent again as values
        attended_elems=cfg.kv_cache_dims[1] + (cfg.kv_lora_rank or cfg.kv_cache_dims[2]),
    )


def _layer_of(name: str) -> int:
    """The layer of a ``blk.N.`` tensor; -1 for the others (embedding, head)."""
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def predict_peak_vram(path: str | Path, cfg: CacheConfig) -> int:
    """Peak VRAM (bytes, CUDA context included) of the runtime started with ``cfg`` on ``path``.

    Plans with the same learned routing counts the runtime would load (they shape the slot
    split; ``learned.seed_counts``), so prediction and allocation agree. Raises AutotuneError
    when the cap cannot hold the runtime at all.
    """
    from autotune.cache_runtime.learned import model_fingerprint, seed_counts

    sizes = model_sizes(path)
    counts = seed_counts(model_fingerprint(path), (sizes.n_layers, sizes.n_expert), cfg.placement)[0] \
        if cfg.learned_placement else None
    return plan_vram(sizes, cfg, counts).peak

"""The hyper-parameters of a MoE GGUF: the file's header, with what llama.cpp fixes per
architecture rather than in the file (rope style, whether the top-k expert weights are
renormalized, which key holds the experts' FFN width, the router's gate) taken from the
architecture's family (``families``).

``n_layers`` counts the layers the forward pass runs: a file's NextN (multi-token prediction)
layers, after them, are left out as llama.cpp's decoder leaves them. The first
``n_dense_lead`` of them have a dense FFN; the expert machinery (expert tables, the cache,
routing traces) numbers only the others, the MoE layers, from 0 (``moe_layer``).

DeepSeek-V2's multi-head latent attention (``kv_lora_rank`` > 0, ``mla``): ``head_dim`` is a
query's and a key's head (the no-RoPE part, then the ``rope_dims`` RoPE part), ``head_dim_v`` a
value's; the KV cache keeps the compressed latent and the shared RoPE key (``kv_cache_dims``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.cache_runtime.families import family_for
from autotune.cache_runtime.rope_scaling import RopeScaling, read_rope_scaling
from autotune.errors import ModelFileError

# llama.cpp's ``expert_gating_func`` codes (0: the architecture's own)
GATING_FUNCS = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_expert: int
    n_expert_used: int
    n_ff_expert: int
    context_length: int
    rms_eps: float
    rope_base: float
    rope_neox: bool
    norm_topk: bool
    qk_norm: bool
    gating: str = "softmax"  # the router's gate: "softmax" or "sigmoid" (``routing.route``)
    expert_weights_scale: float = 0.0  # the selected experts' weights times this (0 or 1: unscaled)
    n_dense_lead: int = 0  # leading layers with a dense FFN instead of experts
    n_ff: int = 0  # the dense FFN's width
    rope_dims: int = 0  # dimensions of each head RoPE rotates (the first ones; MLA: the last); 0: all of them
    rope_scaling: RopeScaling = RopeScaling()
    n_expert_groups: int = 0  # group-limited routing: experts in this many groups (0 or 1: none) ...
    n_group_used: int = 0  # ... of which the top k comes from the best these many
    head_dim_v: int = 0  # a value head's size where it differs from head_dim (MLA)
    q_lora_rank: int = 0  # MLA: q through a rank-q_lora_rank projection (0: directly)
    kv_lora_rank: int = 0  # MLA: the compressed KV latent's size (0: not MLA)
    expert_act: str = "silu"  # the experts' gated activation (``torch_ops.glu``)
    n_swa: int = 0  # the sliding window's length in tokens (0: none) ...
    swa_layers: tuple[bool, ...] = ()  # ... on the layers marked here

    def window(self, il: int) -> int:
        """The keys layer il's queries see: the last ``window`` positions (0: all of them)."""
        return self.n_swa if self.swa_layers and self.swa_layers[il] else 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def v_dim(self) -> int:
        """A value head's size."""
        return self.head_dim_v or self.head_dim

    @property
    def kv_cache_dims(self) -> tuple[int, int, int]:
        """What the KV cache keeps per layer and token: (heads, key dims, value dims). MLA keeps
        one latent (kv_lora_rank) plus the RoPE key (rope_dims), whose first kv_lora_rank
        dims are also the value (so no value dims), as llama.cpp does."""
        if self.mla:
            return 1, self.kv_lora_rank + self.rotated_dims, 0
        return self.n_head_kv, self.head_dim, self.head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_lead

    def moe_layer(self, il: int) -> int:
        """The expert machinery's number of layer ``il`` (a MoE layer)."""
        return il - self.n_dense_lead

    @property
    def rotated_dims(self) -> int:
        return self.rope_dims or self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def attn_out_dim(self) -> int:
        """The attention output's width (the output projection's input)."""
        return self.n_head * self.v_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim


def _fields(path: Path) -> dict[str, Any]:
    from autotune.model_info import open_gguf

    reader = open_gguf(path)
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("tokenizer.ggml.")}


def read_config(path: str | Path) -> ModelConfig:
    """The runtime's view of a GGUF's header; raises for architectures it cannot run."""
    fields = _fields(Path(path))
    arch = fields.get("general.architecture")
    traits = family_for(arch, path).traits

    def key(name: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{name}", default)
        if value is None:
            raise ModelFileError(f"{path}: GGUF lacks {arch}.{name}")
        return value

    if not fields.get(f"{arch}.expert_count"):
        raise ModelFileError(f"{path}: a dense {arch} model (no {arch}.expert_count): the runtime runs routed experts")
    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    head_dim_v = int(key("attention.value_length", head_dim))
    kv_lora_rank = int(key("attention.kv_lora_rank")) if traits.mla else 0
    if traits.mla:  # key_length and value_length are the latent's sizes where the file has the MLA ones
        head_dim = int(key("attention.key_length_mla", head_dim))
        head_dim_v = int(key("attention.value_length_mla", head_dim_v))
        if float(key("attention.temperature_scale", 0.0)):
            raise ModelFileError(f"{path}: attention temperature scaling is not supported")
    elif head_dim_v != head_dim:
        raise ModelFileError(f"{path}: different key and value head sizes are not supported")
    rope_dims = int(key("rope.dimension_count", head_dim))
    if rope_dims % 2 or not 0 < rope_dims <= head_dim:
        raise ModelFileError(f"{path}: RoPE over {rope_dims} of {head_dim} head dimensions")
    if traits.mla and rope_dims >= head_dim:
        raise ModelFileError(f"{path}: MLA with RoPE over {rope_dims} of {head_dim} head dimensions")
    if any(key("rope.dimension_sections", [0, 0])[:2]):
        raise ModelFileError(f"{path}: multi-section (multimodal) RoPE is not supported")
    gating_code = int(key("expert_gating_func", 0))
    if gating_code and gating_code not in GATING_FUNCS:
        raise ModelFileError(f"{path}: expert gating function {gating_code} is not supported")
    gating = GATING_FUNCS.get(gating_code, traits.gating)
    groups, groups_used = int(key("expert_group_count", 0)), int(key("expert_group_used_count", 0))
    if groups > 1 and (int(key("expert_count")) % groups or not 0 < groups_used <= groups):
        raise ModelFileError(f"{path}: routing over the best {groups_used} of {groups} expert groups "
                             f"of {key('expert_count')} experts")
    n_ff = key("feed_forward_length", 0)
    n_layers = int(key("block_count")) - int(key("nextn_predict_layers", 0))
    n_dense_lead = int(key("leading_dense_block_count", 0))
    if not 0 <= n_dense_lead < n_layers:
        raise ModelFileError(f"{path}: {n_dense_lead} leading dense layers of {n_layers}")
    if float(key("rope.freq_base_swa", key("rope.freq_base", 10000.0))) != float(key("rope.freq_base", 10000.0)):
        raise ModelFileError(f"{path}: a RoPE base of its own for the sliding-window layers is not supported")
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(key("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_vocab=0,  # filled in from the token embedding by the loader
        n_expert=int(key("expert_count")),
        n_expert_used=int(key("expert_used_count")),
        n_ff_expert=int(key(traits.expert_ff_key)),
        context_length=int(key("context_length")),
        rms_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_base=float(key("rope.freq_base", 10000.0)),
        rope_neox=traits.rope_neox,
        norm_topk=bool(key("expert_weights_norm", traits.norm_topk)),
        qk_norm=traits.qk_norm,
        gating=gating,
        expert_weights_scale=float(key("expert_weights_scale", 0.0)),
        n_dense_lead=n_dense_lead,
        n_ff=0 if isinstance(n_ff, list) else int(n_ff),
        rope_dims=0 if rope_dims == head_dim else rope_dims,
        rope_scaling=read_rope_scaling(key, path, int(key("context_length")), deepseek_yarn=traits.mla),
        n_expert_groups=groups,
        n_group_used=groups_used,
        head_dim_v=0 if head_dim_v == head_dim else head_dim_v,
        q_lora_rank=int(key("attention.q_lora_rank", 0)) if traits.mla else 0,
        kv_lora_rank=kv_lora_rank,
        expert_act=traits.expert_act,
        n_swa=int(key("attention.sliding_window")) if traits.swa_pattern else 0,
        swa_layers=_swa_layers(fields.get(f"{arch}.attention.sliding_window_pattern", traits.swa_pattern), n_layers)
        if traits.swa_pattern else (),
    )


def _swa_layers(pattern: int | list[bool], n_layers: int) -> tuple[bool, ...]:
    """Which layers have the sliding window, as llama.cpp's ``set_swa_pattern`` marks them: the
    file's per-layer flags, or every layer but each ``pattern``-th (counting from 1; 0: all)."""
    if isinstance(pattern, list):
        return tuple(bool(flag) for flag in pattern[:n_layers])
    return tuple(pattern == 0 or il % pattern < pattern - 1 for il in range(n_layers))

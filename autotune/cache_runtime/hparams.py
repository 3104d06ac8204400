"""The hyper-parameters of a MoE GGUF: the file's header, with what llama.cpp fixes per
architecture rather than in the file (rope style, whether the top-k expert weights are
renormalized, which key holds the experts' FFN width) taken from the architecture's family
(``families``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.cache_runtime.families import family_for
from autotune.errors import ModelFileError


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

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

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
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ModelFileError(f"{path}: different key and value head sizes are not supported")
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise ModelFileError(f"{path}: partial RoPE is not supported")
    return ModelConfig(
        arch=arch,
        n_layers=int(key("block_count")),
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
    )

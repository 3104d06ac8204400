"""What a model family is to the runtime: the choices llama.cpp fixes per architecture rather
than in the file (``ArchTraits``), and the forward pass written against ``ops.Ops``.

Torch-free at import: the tuner reads a family's traits (``hparams.read_config``) while
planning budgets without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from autotune.cache_runtime.ops import Ops

# (ops, tokens, start) -> the last token's logits (vocab,), the selected experts (tokens, layers, k)
Forward = Callable[["Ops", "torch.Tensor", int], tuple["torch.Tensor", "torch.Tensor"]]


@dataclass(frozen=True)
class ArchTraits:
    rope_neox: bool  # rotate pairs (i, i + d/2) rather than (2i, 2i + 1)
    norm_topk: bool  # renormalize the selected experts' softmax weights to sum to 1 (the file may say otherwise)
    qk_norm: bool  # RMSNorm over each head of q and k before RoPE (False: where the file has their weights)
    # the header key (after ``<arch>.``) with one expert's FFN width: llama (Mixtral) files state
    # it only as the dense ``feed_forward_length``
    expert_ff_key: str = "expert_feed_forward_length"
    # the router's gate over all experts ("softmax" or "sigmoid"), or "softmax_weight" (top k of
    # the raw logits, softmax over those k), where the file's ``expert_gating_func`` does not say
    gating: str = "softmax"
    # the tensor (after ``blk.N.``) with the RMSNorm weight before the FFN: GLM-4.5 calls it post_attention_norm
    ffn_norm: str = "ffn_norm"
    # DeepSeek-V2's multi-head latent attention (and its YaRN conventions, ``rope_scaling``)
    mla: bool = False
    # the experts' gated activation: "silu" (SwiGLU) or "swiglu_oai" (gpt-oss's clamped one, ``torch_ops.glu``)
    expert_act: str = "silu"
    # llama.cpp's sliding-window layer pattern where the file has none: every n-th layer attends
    # to the whole context, the others to the last ``attention.sliding_window`` tokens (0: no window)
    swa_pattern: int = 0


@dataclass(frozen=True)
class Family:
    """A family the runtime runs: GGUF ``general.architecture`` ``arch``."""

    arch: str
    traits: ArchTraits
    forward: Forward


@dataclass(frozen=True)
class PlannedFamily:
    """A family the runtime knows but cannot run yet: ``missing`` says what it lacks."""

    arch: str
    traits: ArchTraits
    missing: str

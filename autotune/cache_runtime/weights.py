"""Load a MoE GGUF's weights as torch tensors, kept quantized as in the file.

Every matrix is a ``QTensor``: its raw GGML rows (uint8) plus the type name. The data are
memory-mapped from the file (copy-on-write, so nothing is read until used and the file is
never written) and moved to a device only when asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autotune.cache_runtime.families import family_for
from autotune.cache_runtime.hparams import ModelConfig, read_config
from autotune.cache_runtime.dequant import block_size, dequantize, row_bytes
from autotune.errors import ModelFileError
from autotune.model_info import TensorInfo, inspect_model


@dataclass
class QTensor:
    """A matrix (or a stack of them) in GGML blocks: ``data`` is uint8 ``(..., rows, row_bytes)``."""

    data: torch.Tensor
    qtype: str
    cols: int

    @property
    def rows(self) -> int:
        return self.data.shape[-2]

    @property
    def row_bytes(self) -> int:
        return self.data.shape[-1]

    def to(self, device: torch.device | str) -> "QTensor":
        return QTensor(self.data.to(device), self.qtype, self.cols)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.data, self.qtype)

    def __getitem__(self, index: int) -> "QTensor":
        """One matrix of a stack (one expert)."""
        return QTensor(self.data[index], self.qtype, self.cols)


@dataclass
class LayerWeights:
    """One layer's weights; None where the layer or its family has no such part. A MoE layer
    has the router and the expert stacks, a leading dense layer the dense FFN instead. MLA
    attention (``ModelConfig.mla``) has no wk, wv, and wq only where q is not low-rank."""

    attn_norm: torch.Tensor
    wq: QTensor | None
    wk: QTensor | None
    wv: QTensor | None
    wo: QTensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    ffn_norm: torch.Tensor
    router: QTensor | None = None
    gate_exps: QTensor | None = None  # (n_expert, n_ff_expert, row_bytes)
    up_exps: QTensor | None = None
    down_exps: QTensor | None = None  # (n_expert, n_embd, row_bytes)
    bq: torch.Tensor | None = None  # q, k, v biases
    bk: torch.Tensor | None = None
    bv: torch.Tensor | None = None
    exp_probs_b: torch.Tensor | None = None  # (n_expert,) added to the gate's scores for selection only
    gate_shexp: QTensor | None = None  # the shared expert, always resident
    up_shexp: QTensor | None = None
    down_shexp: QTensor | None = None
    gate_inp_shexp: torch.Tensor | None = None  # (n_embd,): the shared expert's sigmoid gate (Qwen2-MoE)
    ffn_gate: QTensor | None = None  # the dense FFN of a leading dense layer
    ffn_up: QTensor | None = None
    ffn_down: QTensor | None = None
    wq_a: QTensor | None = None  # MLA's low-rank q: wq_b(RMSNorm_q_a_norm(wq_a x))
    q_a_norm: torch.Tensor | None = None
    wq_b: QTensor | None = None
    wkv_a_mqa: QTensor | None = None  # MLA: x -> the KV latent (kv_lora_rank) and the RoPE key
    kv_a_norm: torch.Tensor | None = None
    wk_b: QTensor | None = None  # MLA: (n_head, kv_lora_rank, no-RoPE dims) absorbed into q
    wv_b: QTensor | None = None  # MLA: (n_head, v dims, kv_lora_rank) from the latent to values
    wkv_b: QTensor | None = None  # MLA in older files: wk_b and wv_b in one (n_head x (no-RoPE + v), kv_lora_rank)
    bo: torch.Tensor | None = None  # the attention output's bias
    attn_sinks: torch.Tensor | None = None  # (n_head,): each head's sink logit, one more term in its softmax
    router_b: torch.Tensor | None = None  # (n_expert,): added to the router's logits
    gate_exps_b: torch.Tensor | None = None  # (n_expert, n_ff_expert): each expert's gate, up and down biases
    up_exps_b: torch.Tensor | None = None
    down_exps_b: torch.Tensor | None = None  # (n_expert, n_embd)

    @property
    def plain_experts(self) -> bool:
        """Whether the layer's experts are down(silu(gate x) * up x) without biases: what the
        fused kernels and ggml's CPU experts compute."""
        return self.gate_exps_b is None and self.up_exps_b is None and self.down_exps_b is None


@dataclass
class ModelWeights:
    config: ModelConfig
    token_embd: QTensor
    layers: list[LayerWeights]
    output_norm: torch.Tensor
    output: QTensor  # the token embedding where the file ties them

    @property
    def moe_layers(self) -> list[LayerWeights]:
        """The layers with experts, as the expert machinery numbers them (``ModelConfig.moe_layer``)."""
        return self.layers[self.config.n_dense_lead :]

    def to(self, device: torch.device | str) -> "ModelWeights":
        """A copy on ``device`` (a no-op for tensors already there)."""

        def move(value):
            if isinstance(value, (QTensor, torch.Tensor)):
                return value.to(device)
            return value

        layers = [LayerWeights(**{f.name: move(getattr(layer, f.name))
                                  for f in dataclasses.fields(LayerWeights)})
                  for layer in self.layers]
        return ModelWeights(self.config, self.token_embd.to(device), layers,
                            self.output_norm.to(device), self.output.to(device))


class _TensorFile:
    """Tensors of one GGUF by name, as torch views of a copy-on-write memory map."""

    def __init__(self, path: Path, tensors: list[TensorInfo]):
        self.path = path
        self.map = np.memmap(path, dtype=np.uint8, mode="c")
        self.info = {t.name: t for t in tensors}

    def has(self, name: str) -> bool:
        return name in self.info

    def optional_matrix(self, name: str) -> QTensor | None:
        return self.matrix(name) if self.has(name) else None

    def optional_vector(self, name: str) -> torch.Tensor | None:
        return self.vector(name) if self.has(name) else None

    def raw(self, name: str) -> tuple[torch.Tensor, TensorInfo]:
        info = self.info.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: missing tensor {name}")
        return torch.from_numpy(self.map[info.offset : info.offset + info.nbytes]), info

    def matrix(self, name: str) -> QTensor:
        """A 2-D weight or a 3-D stack of experts, as raw rows."""
        data, info = self.raw(name)
        cols = info.shape[0]
        block_size(info.type)  # raises for types the runtime cannot run
        rows = int(np.prod(info.shape[1:]))
        data = data.view(rows, row_bytes(info.type, cols))
        if len(info.shape) == 3:
            data = data.view(info.shape[2], info.shape[1], -1)
        return QTensor(data, info.type, cols)

    def vector(self, name: str) -> torch.Tensor:
        """A norm weight or a bias, as float32; a stack of them (one per expert) as rows."""
        data, info = self.raw(name)
        return dequantize(data.view(1, -1), info.type).reshape(*reversed(info.shape))


def _absent(name: str) -> None:
    return None


def _mla_attention(f: _TensorFile, p: str, config: ModelConfig) -> dict[str, QTensor | torch.Tensor | None]:
    """A layer's MLA tensors (prefix ``p``): the split wk_b, wv_b a file converted for
    llama.cpp's absorbed MLA has, else the older files' wkv_b."""
    low_rank_q = config.q_lora_rank > 0
    split = f.has(p + "attn_k_b.weight")
    return dict(
        wq_a=f.matrix(p + "attn_q_a.weight") if low_rank_q else None,
        q_a_norm=f.vector(p + "attn_q_a_norm.weight") if low_rank_q else None,
        wq_b=f.matrix(p + "attn_q_b.weight") if low_rank_q else None,
        wkv_a_mqa=f.matrix(p + "attn_kv_a_mqa.weight"),
        kv_a_norm=f.vector(p + "attn_kv_a_norm.weight"),
        wk_b=f.matrix(p + "attn_k_b.weight") if split else None,
        wv_b=f.matrix(p + "attn_v_b.weight") if split else None,
        wkv_b=None if split else f.matrix(p + "attn_kv_b.weight"),
    )


def load_weights(path: str | Path) -> ModelWeights:
    """Map a GGUF's weights (on the CPU; ``.to(device)`` moves them)."""
    path = Path(path)
    config = read_config(path)
    if config.n_expert == 0:
        raise ModelFileError(f"{path}: not a mixture-of-experts model")
    f = _TensorFile(path, inspect_model(path).tensors)
    traits = family_for(config.arch, path).traits
    # q/k norm: always where the family has it, else where the file has its weights
    config = dataclasses.replace(config, qk_norm=config.qk_norm or f.has("blk.0.attn_q_norm.weight"))
    layers = []
    for il in range(config.n_layers):
        p = f"blk.{il}."
        moe = il >= config.n_dense_lead
        expert_part = f.matrix if moe else _absent  # a MoE layer's parts, or a dense layer's
        dense_part = _absent if moe else f.matrix
        layers.append(LayerWeights(
            attn_norm=f.vector(p + "attn_norm.weight"),
            wq=None if config.q_lora_rank else f.matrix(p + "attn_q.weight"),
            wk=None if config.mla else f.matrix(p + "attn_k.weight"),
            wv=None if config.mla else f.matrix(p + "attn_v.weight"),
            wo=f.matrix(p + "attn_output.weight"),
            q_norm=f.vector(p + "attn_q_norm.weight") if config.qk_norm else None,
            k_norm=f.vector(p + "attn_k_norm.weight") if config.qk_norm else None,
            ffn_norm=f.vector(f"{p}{traits.ffn_norm}.weight"),
            router=expert_part(p + "ffn_gate_inp.weight"),
            gate_exps=expert_part(p + "ffn_gate_exps.weight"),
            up_exps=expert_part(p + "ffn_up_exps.weight"),
            down_exps=expert_part(p + "ffn_down_exps.weight"),
            bq=f.optional_vector(p + "attn_q.bias"),
            bk=f.optional_vector(p + "attn_k.bias"),
            bv=f.optional_vector(p + "attn_v.bias"),
            exp_probs_b=f.optional_vector(p + "exp_probs_b.bias"),
            gate_shexp=f.optional_matrix(p + "ffn_gate_shexp.weight"),
            up_shexp=f.optional_matrix(p + "ffn_up_shexp.weight"),
            down_shexp=f.optional_matrix(p + "ffn_down_shexp.weight"),
            gate_inp_shexp=f.optional_vector(p + "ffn_gate_inp_shexp.weight"),
            ffn_gate=dense_part(p + "ffn_gate.weight"),
            ffn_up=dense_part(p + "ffn_up.weight"),
            ffn_down=dense_part(p + "ffn_down.weight"),
            bo=f.optional_vector(p + "attn_output.bias"),
            attn_sinks=f.optional_vector(p + "attn_sinks.weight"),
            router_b=f.optional_vector(p + "ffn_gate_inp.bias") if moe else None,
            gate_exps_b=f.optional_vector(p + "ffn_gate_exps.bias") if moe else None,
            up_exps_b=f.optional_vector(p + "ffn_up_exps.bias") if moe else None,
            down_exps_b=f.optional_vector(p + "ffn_down_exps.bias") if moe else None,
            **(_mla_attention(f, p, config) if config.mla else {}),
        ))
    token_embd = f.matrix("token_embd.weight")
    output = f.matrix("output.weight") if f.has("output.weight") else token_embd
    config = dataclasses.replace(config, n_vocab=token_embd.rows)
    return ModelWeights(config, token_embd, layers, f.vector("output_norm.weight"), output)

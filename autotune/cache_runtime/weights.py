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
    attn_norm: torch.Tensor
    wq: QTensor
    wk: QTensor
    wv: QTensor
    wo: QTensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    ffn_norm: torch.Tensor
    router: QTensor
    gate_exps: QTensor  # (n_expert, n_ff_expert, row_bytes)
    up_exps: QTensor
    down_exps: QTensor  # (n_expert, n_embd, row_bytes)


@dataclass
class ModelWeights:
    config: ModelConfig
    token_embd: QTensor
    layers: list[LayerWeights]
    output_norm: torch.Tensor
    output: QTensor  # the token embedding where the file ties them

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
        """A norm weight, as float32."""
        data, info = self.raw(name)
        return dequantize(data.view(1, -1), info.type).reshape(-1)


def load_weights(path: str | Path) -> ModelWeights:
    """Map a GGUF's weights (on the CPU; ``.to(device)`` moves them)."""
    path = Path(path)
    config = read_config(path)
    if config.n_expert == 0:
        raise ModelFileError(f"{path}: not a mixture-of-experts model")
    f = _TensorFile(path, inspect_model(path).tensors)
    layers = []
    for il in range(config.n_layers):
        p = f"blk.{il}."
        layers.append(LayerWeights(
            attn_norm=f.vector(p + "attn_norm.weight"),
            wq=f.matrix(p + "attn_q.weight"),
            wk=f.matrix(p + "attn_k.weight"),
            wv=f.matrix(p + "attn_v.weight"),
            wo=f.matrix(p + "attn_output.weight"),
            q_norm=f.vector(p + "attn_q_norm.weight") if config.qk_norm else None,
            k_norm=f.vector(p + "attn_k_norm.weight") if config.qk_norm else None,
            ffn_norm=f.vector(p + "ffn_norm.weight"),
            router=f.matrix(p + "ffn_gate_inp.weight"),
            gate_exps=f.matrix(p + "ffn_gate_exps.weight"),
            up_exps=f.matrix(p + "ffn_up_exps.weight"),
            down_exps=f.matrix(p + "ffn_down_exps.weight"),
        ))
    token_embd = f.matrix("token_embd.weight")
    output = f.matrix("output.weight") if f.has("output.weight") else token_embd
    config = dataclasses.replace(config, n_vocab=token_embd.rows)
    return ModelWeights(config, token_embd, layers, f.vector("output_norm.weight"), output)

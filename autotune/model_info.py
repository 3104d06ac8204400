"""GGUF inspection: what a model is made of, in the units the tuner plans VRAM with.

Reads only the header and tensor table through the ``gguf`` package (llama.cpp's own
reader); the tensor data is never touched, so a 20 GB file is inspected in moments.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import ModelFileError

GGUF_MAGIC = b"GGUF"

# Bytes per element of the KV-cache types llama.cpp offers for -ctk/-ctv.
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")

# Which per-layer group each tensor name (after "blk.N.") belongs to.
_EXPERT = ("ffn_gate_exps.", "ffn_up_exps.", "ffn_down_exps.", "ffn_gate_up_exps.")
_SHARED = ("ffn_gate_shexp.", "ffn_up_shexp.", "ffn_down_shexp.", "ffn_gate_inp_shexp.")
_ROUTER = ("ffn_gate_inp.", "exp_probs_b")
_DENSE = ("ffn_gate.", "ffn_up.", "ffn_down.")


@dataclass
class TensorInfo:
    name: str
    type: str  # GGML type name, e.g. "Q4_K"
    shape: list[int]  # GGML order: shape[0] is the contiguous (input) dimension
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


@dataclass
class LayerBytes:
    """Bytes of one transformer block, by group."""

    attention: int = 0  # q/k/v/o, their norms and biases, attn_norm
    router: int = 0  # ffn_gate_inp (and expert bias where present)
    experts: int = 0  # all routed experts of this layer
    shared_experts: int = 0
    dense_ffn: int = 0
    other: int = 0  # ffn_norm and anything not named above

    @property
    def total(self) -> int:
        return (
            self.attention
            + self.router
            + self.experts
            + self.shared_experts
            + self.dense_ffn
            + self.other
        )


@dataclass
class ModelProfile:
    """Everything the tuner and backends need to know about a GGUF file."""

    path: str
    file_bytes: int
    architecture: str
    name: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    context_length: int
    n_expert: int  # 0 for a dense model
    n_expert_used: int
    n_ff: int  # dense FFN size (0 where absent)
    n_ff_expert: int  # one expert's FFN size (0 for a dense model)
    token_embd_bytes: int
    output_bytes: int  # output head and output_norm
    layers: list[LayerBytes]
    quant_types: dict[str, int]  # GGML type -> bytes of tensor data in that type
    tensor_data_bytes: int
    fingerprint: str
    n_shared_experts: int = 0  # shared experts per MoE layer (a Qwen2-MoE layer's one of its own width: 1)
    n_ff_shexp: int = 0  # a layer's shared experts' FFN width, all together (0: none)
    rope_dims: int = 0  # RoPE over the first rope_dims of each head (0: the file does not say; all)
    kv_lora_rank: int = 0  # latent attention (MLA): the compressed KV latent's width (0: none)
    # MLA as llama.cpp caches it for files with the split attn_k_b/attn_v_b: one K of the latent
    # plus the RoPE key (head_dim_k) shared by every head, and no V (it is a view of K)
    latent_kv: bool = False
    sliding_window: int = 0  # the header's attention.sliding_window (0: none)
    attn_sinks: bool = False  # per-head attention sink logits (attn_sinks tensors)
    tensors: list[TensorInfo] = field(default_factory=list, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert (gate + up + down) in the first MoE layer."""
        moe_layers = [layer for layer in self.layers if layer.experts]
        return moe_layers[0].experts // self.n_expert if moe_layers else 0

    @property
    def experts_bytes(self) -> int:
        return sum(layer.experts for layer in self.layers)

    @property
    def shared_experts_bytes(self) -> int:
        return sum(layer.shared_experts for layer in self.layers)

    @property
    def n_dense_lead(self) -> int:
        """Leading layers with a dense FFN instead of routed experts (0 for a dense model)."""
        if not self.is_moe:
            return 0
        return next((index for index, layer in enumerate(self.layers) if layer.experts), len(self.layers))

    @property
    def n_moe_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.experts)

    def kv_bytes_per_token(self, type_k: str = "f16", type_v: str = "f16") -> int:
        """KV-cache bytes one token of context costs, all layers together, as llama.cpp keeps
        them: K and V per KV head, or for a latent KV (MLA) the one K row of kv_lora_rank +
        rope dims."""
        if self.latent_kv:
            per_layer = self.head_dim_k * KV_TYPE_BYTES[type_k]
        else:
            per_layer = self.n_head_kv * (
                self.head_dim_k * KV_TYPE_BYTES[type_k] + self.head_dim_v * KV_TYPE_BYTES[type_v]
            )
        return int(round(per_layer * self.n_layers))

    def to_json(self, with_tensors: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_tensors:
            data.pop("tensors")
        data["is_moe"] = self.is_moe
        data["expert_bytes"] = self.expert_bytes
        data["experts_bytes"] = self.experts_bytes
        data["shared_experts_bytes"] = self.shared_experts_bytes
        data["n_dense_lead"] = self.n_dense_lead
        data["kv_bytes_per_token"] = {
            kv: self.kv_bytes_per_token(kv, kv) for kv in KV_TYPE_BYTES
        }
        return data


def _field_value(reader: Any, key: str) -> Any:
    """A scalar or string metadata value, or None when the key is absent."""
    field_ = reader.fields.get(key)
    if field_ is None:
        return None
    value = field_.contents()
    return value


def _layer_group(suffix: str) -> str:
    if suffix.startswith(_EXPERT):
        return "experts"
    if suffix.startswith(_SHARED):
        return "shared_experts"
    if suffix.startswith(_ROUTER):
        return "router"
    if suffix.startswith(_DENSE):
        return "dense_ffn"
    if suffix.startswith("attn"):
        return "attention"
    return "other"


def _fingerprint(reader: Any, tensors: list[TensorInfo]) -> str:
    """Stable identity from header metadata and the tensor table (not the 20 GB of data)."""
    digest = hashlib.sha256()
    for key in sorted(reader.fields):
        if key.startswith("GGUF."):
            continue
        field_ = reader.fields[key]
        digest.update(key.encode())
        for index in field_.data:
            digest.update(np.ascontiguousarray(field_.parts[index]).tobytes())
    for tensor in tensors:
        digest.update(f"{tensor.name}|{tensor.type}|{tensor.shape}|{tensor.offset}".encode())
    return digest.hexdigest()[:16]


def open_gguf(path: str | Path) -> Any:
    """A GGUF file's reader (the ``gguf`` package's), kept per file (path, size and
    modification time): reading a header with a large vocabulary takes seconds, and loading
    a model asks for it several times (config, sizes, fingerprint, tensors)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    stat = path.stat()
    return _reader(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _reader(path: str, size: int, mtime_ns: int) -> Any:
    from gguf import GGUFReader

    class PlainArrayReader(GGUFReader):
        """GGUFReader parsing a plain ndarray view of its memory map: it slices the header once
        per value (2.3 million times for a 151k-token vocabulary), and a ``np.memmap`` slice
        costs several times an ndarray's. The same fields and tensors, 3.6 times as fast."""

        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, mapped: np.ndarray) -> None:
            self._plain = np.asarray(mapped)  # a view: the memory map stays its base

    try:
        return PlainArrayReader(path, "r")
    except Exception as exc:  # the reader raises many kinds on a cut-off file
        raise ModelFileError(f"{path}: truncated or corrupt GGUF file ({exc})") from exc


def _ffn_width(tensors: list[TensorInfo], kind: str) -> int:
    """The FFN width of the first up projection of ``kind`` ("_exps": one expert's, ne: n_embd,
    n_ff, n_expert; "_shexp": the shared experts'); 0 where the file has none. Files state
    the experts' width only as the dense ``feed_forward_length`` in some families (llama: Mixtral)."""
    return next((t.shape[1] for t in tensors if t.name.endswith(f".ffn_up{kind}.weight")), 0)


def inspect_model(path: str | Path) -> ModelProfile:
    """Read a GGUF file's header and tensor table into a ModelProfile."""
    path = Path(path)
    reader = open_gguf(path)
    file_bytes = path.stat().st_size

    arch = _field_value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{path}: GGUF has no general.architecture")

    def key(name: str, default: Any = 0) -> Any:
        value = _field_value(reader, f"{arch}.{name}")
        return default if value is None else value

    tensors = [
        TensorInfo(
            name=t.name,
            type=t.tensor_type.name,
            shape=[int(x) for x in t.shape],
            offset=int(t.data_offset),
            nbytes=int(t.n_bytes),
        )
        for t in reader.tensors
    ]
    end = max((t.offset + t.nbytes for t in tensors), default=0)
    if end > file_bytes:
        raise ModelFileError(
            f"{path}: truncated GGUF (tensor data needs {end} bytes, file has {file_bytes})"
        )

    # NextN (multi-token prediction) layers, after the others, are no part of llama.cpp's decoder
    n_layers = int(key("block_count")) - int(key("nextn_predict_layers", 0))
    layers = [LayerBytes() for _ in range(n_layers)]
    quant_types: dict[str, int] = defaultdict(int)
    token_embd = output = 0
    for tensor in tensors:
        quant_types[tensor.type] += tensor.nbytes
        match = _BLOCK_TENSOR.match(tensor.name)
        if match and int(match.group(1)) >= n_layers:
            continue  # a NextN layer's
        if match:
            layer = layers[int(match.group(1))]
            group = _layer_group(match.group(2))
            setattr(layer, group, getattr(layer, group) + tensor.nbytes)
        elif tensor.name.startswith("token_embd"):
            token_embd += tensor.nbytes
        else:
            output += tensor.nbytes  # output.weight, output_norm, rope factors, ...

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    head_dim = n_embd // n_head if n_head else 0
    n_head_kv = key("attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):  # per-layer list in some architectures
        n_head_kv = max(n_head_kv)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens.data) if tokens is not None else 0
    name = _field_value(reader, "general.name") or path.stem
    shared_bytes = any(layer.shared_experts for layer in layers)
    sliding_window = key("attention.sliding_window")

    return ModelProfile(
        path=str(path),
        file_bytes=file_bytes,
        architecture=arch,
        name=str(name),
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(n_head_kv),
        head_dim_k=int(key("attention.key_length", head_dim)),
        head_dim_v=int(key("attention.value_length", head_dim)),
        n_vocab=n_vocab,
        context_length=int(key("context_length")),
        n_expert=int(key("expert_count")),
        n_expert_used=int(key("expert_used_count")),
        n_ff=int(key("feed_forward_length")) if not isinstance(key("feed_forward_length"), list) else 0,
        n_ff_expert=int(key("expert_feed_forward_length")) or _ffn_width(tensors, "_exps"),
        token_embd_bytes=token_embd,
        output_bytes=output,
        layers=layers,
        quant_types=dict(sorted(quant_types.items(), key=lambda kv: -kv[1])),
        tensor_data_bytes=sum(t.nbytes for t in tensors),
        fingerprint=_fingerprint(reader, tensors),
        n_shared_experts=int(key("expert_shared_count", 1 if shared_bytes else 0)),
        n_ff_shexp=_ffn_width(tensors, "_shexp"),
        rope_dims=int(key("rope.dimension_count")),
        kv_lora_rank=int(key("attention.kv_lora_rank")),
        latent_kv=any(t.name.endswith(".attn_k_b.weight") for t in tensors),
        sliding_window=0 if isinstance(sliding_window, list) else int(sliding_window),
        attn_sinks=any(".attn_sinks" in t.name for t in tensors),
        tensors=tensors,
    )

"""A first, explicit memory model of llama.cpp on one GPU: the VRAM a config takes, by term.

The terms follow where llama.cpp puts things (src/llama-model.cpp, llama-context.cpp):

- ``cuda_context``: the CUDA context of the trial process (about 0.5 GiB on the H100).
- ``weights``: layers ``il >= n_layers + 1 - n_gpu_layers`` are offloaded (the output layer
  goes first, with ``n_gpu_layers >= 1``): their attention, router, shared-expert and norm
  tensors, and their experts unless those stay on the CPU; the output head. Token
  embeddings always stay on the CPU.
- ``kv_cache``: the offloaded layers' K and V for n_ctx (padded to 256) tokens.
- ``compute``: the GPU compute buffer, reserved for the worst ubatch: the logits
  (n_vocab x n_ubatch floats), attention scores without flash attention (n_ctx x n_ubatch x
  n_head floats), the widest layer's FFN activations (routed experts and shared experts
  together, or a leading dense layer's FFN), and with ``op_offload`` one layer's
  CPU-resident weights copied in for a batch of 32 tokens or more.

What this misses on a machine (driver, cuBLAS workspace, allocator rounding) the tuner
learns as a per-machine correction (``autotune.search.vram_calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.backends.base import Config
from autotune.backends.llama_cpp.knobs import cpu_expert_layers
from autotune.model_info import ModelProfile

CUDA_CONTEXT_BYTES = 512 * 2**20
KV_PADDING = 256  # llama.cpp pads n_ctx of the unified KV cache to this
OP_OFFLOAD_MIN_BATCH = 32  # the CUDA backend offloads host-weight ops from this batch size
FLOAT_BYTES = 4


@dataclass(frozen=True)
class VramEstimate:
    cuda_context: int
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.cuda_context + self.weights + self.kv_cache + self.compute


def ffn_width(model: ModelProfile) -> int:
    """The widest FFN one token runs through in a layer: a MoE layer's selected experts and its
    shared experts, or a leading dense layer's FFN (a dense model's every layer)."""
    if not model.is_moe:
        return model.n_ff
    moe = model.n_ff_expert * model.n_expert_used + model.n_ff_shexp
    return max(moe, model.n_ff if model.n_dense_lead else 0)


def estimate_vram(config: Config, model: ModelProfile) -> VramEstimate:
    """The VRAM terms of a normalized config (see ``llama_config.normalize``)."""
    first_gpu_layer = max(0, model.n_layers + 1 - config["n_gpu_layers"])
    cpu_experts = set(cpu_expert_layers(config))
    weights = model.output_bytes if config["n_gpu_layers"] >= 1 else 0
    host_layer_bytes = [0]  # bytes of each layer's CPU-resident weights that op_offload may copy
    for index, layer in enumerate(model.layers):
        if index < first_gpu_layer:
            host_layer_bytes.append(layer.total)
        elif index in cpu_experts:
            weights += layer.total - layer.experts
            host_layer_bytes.append(layer.experts)
        else:
            weights += layer.total
    n_gpu_layers = model.n_layers - min(first_gpu_layer, model.n_layers)
    n_ctx = -(-config["n_ctx"] // KV_PADDING) * KV_PADDING
    kv_per_layer = model.kv_bytes_per_token(config["type_k"], config["type_v"]) / max(1, model.n_layers)
    kv_cache = int(n_ctx * kv_per_layer * n_gpu_layers)

    n_ubatch = min(config["n_ubatch"], config["n_batch"], n_ctx)
    logits = model.n_vocab * n_ubatch * FLOAT_BYTES
    scores = 0 if config["flash_attn"] else n_ctx * n_ubatch * model.n_head * FLOAT_BYTES
    activations = 3 * n_ubatch * ffn_width(model) * FLOAT_BYTES  # gate, up and their product
    copies = max(host_layer_bytes) if config["op_offload"] and n_ubatch >= OP_OFFLOAD_MIN_BATCH else 0
    return VramEstimate(CUDA_CONTEXT_BYTES, weights, kv_cache, logits + scores + activations + copies)

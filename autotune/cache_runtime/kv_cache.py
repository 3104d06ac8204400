"""The KV cache and the decode position, shared by the torch and Triton paths."""

from __future__ import annotations

import torch

from autotune.cache_runtime.hparams import ModelConfig


class KVCache:
    """Keys and values of every layer, laid out (layer, kv_head, position, dims) as
    ``cfg.kv_cache_dims`` says: for MLA one latent "head" whose first dims are also the values
    (``v`` has no dims then).

    ``pos`` is the position the next decoded token is written at, kept on the device so
    that a captured decode graph reads (and advances) it without the host.
    """

    def __init__(self, cfg: ModelConfig, max_ctx: int, device: torch.device, dtype: torch.dtype):
        heads, k_dims, v_dims = cfg.kv_cache_dims
        self.k = torch.zeros((cfg.n_layers, heads, max_ctx, k_dims), dtype=dtype, device=device)
        self.v = torch.zeros((cfg.n_layers, heads, max_ctx, v_dims), dtype=dtype, device=device)
        self.pos = torch.zeros(1, dtype=torch.int32, device=device)
        self.positions = torch.arange(max_ctx, device=device)  # what a decode step masks past ``pos``
        self.max_ctx = max_ctx

    def store(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (tokens, kv_heads, head_dim) for positions start, start + 1, ..."""
        end = start + k.shape[0]
        self.k[layer, :, start:end] = k.transpose(0, 1).to(self.k.dtype)
        self.v[layer, :, start:end] = v.transpose(0, 1).to(self.v.dtype)

    def store_keys(self, layer: int, start: int, k: torch.Tensor) -> None:
        """k: (tokens, kv_heads, dims) for positions start, ...: a cache whose values are
        the keys' first dims (MLA)."""
        self.k[layer, :, start : start + k.shape[0]] = k.transpose(0, 1).to(self.k.dtype)

    def store_keys_at(self, layer: int, k: torch.Tensor) -> None:
        """``store_keys`` of one token (1, kv_heads, dims) at the device position ``pos``."""
        self.k[layer].index_copy_(1, self.pos.long(), k.transpose(0, 1).to(self.k.dtype))

"""Latent attention's (MLA) decode kernels (``triton_mla``) against the torch path (``mla``).

As in test_runtime_triton: on a machine without a GPU they run in Triton's interpreter
(TRITON_INTERPRET=1, set here before any kernel module is imported); on the GPU machine the
same tests run compiled. Skipped where Triton is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from autotune.cache_runtime import triton_ops  # noqa: E402
from autotune.cache_runtime.hparams import ModelConfig  # noqa: E402
from autotune.cache_runtime.kv_cache import KVCache  # noqa: E402
from autotune.cache_runtime.rope import RopeTable  # noqa: E402
from autotune.cache_runtime.rope_scaling import RopeScaling  # noqa: E402
from autotune.cache_runtime.torch_ops import TorchOps  # noqa: E402
from autotune.cache_runtime.triton_mla import fits  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MAX_CTX = 80
YARN = RopeScaling(freq_scale=0.25, ext_factor=1.0, attn_factor=1.0, orig_ctx=32, yarn_log_mul=1.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _LatentOps(triton_ops.TritonOps):
    """TritonOps' latent attention without a model around it (no expert table)."""

    def __init__(self, weights, cache, rope):
        TorchOps.__init__(self, weights, cache, rope)


def _config(n_head: int, lora: int, rope: int, nope: int, neox: bool = False,
            scaling: RopeScaling = RopeScaling()) -> ModelConfig:
    return ModelConfig(arch="deepseek2", n_layers=2, n_embd=64, n_head=n_head, n_head_kv=1, head_dim=nope + rope,
                       n_vocab=0, n_expert=0, n_expert_used=0, n_ff_expert=0, context_length=MAX_CTX,
                       rms_eps=1e-6, rope_base=10000.0, rope_neox=neox, norm_topk=False, qk_norm=False,
                       rope_dims=rope, rope_scaling=scaling, head_dim_v=128, kv_lora_rank=lora)


def _decode(ops_class: type, cfg: ModelConfig, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's latent attention of one random token at ``pos`` over random earlier latents:
    the weighted latents and the cache's rows up to pos."""
    gen = torch.Generator().manual_seed(pos)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)

    lora, heads = cfg.kv_lora_rank, cfg.n_head
    layer = type("Layer", (), dict(kv_a_norm=torch.rand(lora, generator=gen).to(DEVICE) + 0.5))()
    weights = type("W", (), dict(config=cfg, layers=[None, layer]))()
    cache = KVCache(cfg, MAX_CTX, torch.device(DEVICE), torch.float16)
    ops = ops_class(weights, cache, RopeTable(cfg, MAX_CTX, torch.device(DEVICE)))
    nope = cfg.head_dim - cfg.rotated_dims
    ops.absorbed[1] = randn(heads, lora, nope, scale=nope**-0.5).half(), randn(heads, cfg.v_dim, lora).half()
    cache.k[1, 0, :pos] = randn(pos, lora + cfg.rotated_dims).half()
    cache.k[1, 0, pos + 1:] = 1e4  # past pos: never to be read
    cache.pos.fill_(pos)
    q = randn(1, heads, cfg.head_dim, scale=0.6)  # scaled scores of about 1: softmax neither flat nor one-hot
    kv = randn(1, lora + cfg.rotated_dims, scale=3.0)
    return ops.latent_attend(q, kv, 1, pos), cache.k[1, 0, : pos + 1].clone()


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


@pytest.mark.parametrize("pos", [0, 37, MAX_CTX - 1])
@pytest.mark.parametrize("shape", ["v2-lite", "v3-heads", "tiny-neox-yarn"])
def test_latent_decode_kernels_match_torch(shape: str, pos: int) -> None:
    """V2-Lite's shape (16 heads: one head block); 40 heads, three blocks (V3 has 128), the
    last one partial; deepseek2-tiny's widths with NeoX RoPE and YaRN (kq_scale's mscale).
    Measured under the interpreter: weighted latents within 8.9e-4 of their largest value (the
    torch path's float16 scores and weights are as far from a float64 reference: up to 1.1e-3),
    the cache rows equal. Off by 0.016 to 0.73 with one position past pos attended, the other
    RoPE style, no RoPE scores, or (YaRN) 1 / sqrt(head_dim) for kq_scale."""
    cfg = {"v2-lite": _config(16, 512, 64, 128), "v3-heads": _config(40, 512, 64, 128),
           "tiny-neox-yarn": _config(4, 256, 32, 64, neox=True, scaling=YARN)}[shape]
    want, want_cache = _decode(TorchOps, cfg, pos)
    got, got_cache = _decode(_LatentOps, cfg, pos)
    assert got.shape == want.shape == (1, cfg.n_head, cfg.kv_lora_rank) and got.dtype == torch.float16
    assert _rel(got_cache, want_cache) < 1e-3
    assert _rel(got, want) < 5e-3


def test_latent_widths_the_kernels_cannot_tile_take_the_torch_path() -> None:
    """A latent of 96 (not a power of two) decodes as TorchOps does."""
    cfg = _config(4, 96, 32, 64)
    assert not fits(cfg)
    want, want_cache = _decode(TorchOps, cfg, 5)
    got, got_cache = _decode(_LatentOps, cfg, 5)
    assert torch.equal(got, want) and torch.equal(got_cache, want_cache)

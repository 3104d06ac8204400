"""Rotary position embedding: the cos/sin table and its torch application."""

from __future__ import annotations

import torch

from autotune.cache_runtime.hparams import ModelConfig


class RopeTable:
    """cos and sin of pos * base^(-2i/d), float32 (max_ctx, d / 2), computed in float64, where d
    is the dimensions rotated: the first ``cfg.rotated_dims`` of each head (the rest pass as they
    are). With RoPE scaling (``cfg.rope_scaling``) the angles and magnitudes are ggml's
    ``rope_yarn``: linear scaling interpolates every angle, YaRN ramps from extrapolated
    (fast) to interpolated (slow) pairs and scales the magnitude."""

    def __init__(self, cfg: ModelConfig, max_ctx: int, device: torch.device):
        self.dims = cfg.rotated_dims
        half = self.dims // 2
        scaling = cfg.rope_scaling
        pair = torch.arange(half, dtype=torch.float64)
        freqs = cfg.rope_base ** (-2.0 * pair / self.dims)
        interpolated = scaling.freq_scale * freqs
        if scaling.ext_factor:
            low, high = scaling.corr_dims(self.dims, cfg.rope_base)
            ramp = 1 - ((pair - low) / max(0.001, high - low)).clamp(0, 1)
            mix = ramp * scaling.ext_factor
            freqs = interpolated * (1 - mix) + freqs * mix
        else:
            freqs = interpolated
        angle = torch.arange(max_ctx, dtype=torch.float64)[:, None] * freqs
        self.cos = (torch.cos(angle) * scaling.magnitude).float().to(device)
        self.sin = (torch.sin(angle) * scaling.magnitude).float().to(device)
        self.neox = cfg.rope_neox

    def apply(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x: (tokens, heads, head_dim) at positions start, start + 1, ..."""
        n = x.shape[0]
        return self._apply(x, self.cos[start : start + n, None, :], self.sin[start : start + n, None, :])

    def apply_at(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``apply`` to one token (1, heads, head_dim) at the device position ``pos`` (1,): no
        read by the host, so a captured decode graph may run it."""
        return self._apply(x, self.cos.index_select(0, pos)[:, None, :], self.sin.index_select(0, pos)[:, None, :])

    def _apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.dims < x.shape[-1]:
            return torch.cat([self._rotate(x[..., : self.dims], cos, sin), x[..., self.dims :]], dim=-1)
        return self._rotate(x, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        if self.neox:
            x1, x2 = x[..., :half], x[..., half:]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)

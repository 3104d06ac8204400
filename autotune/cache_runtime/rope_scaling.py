"""RoPE scaling (linear, YaRN) as llama.cpp derives it from a GGUF's ``rope.scaling.*`` keys.

Torch-free: ``hparams`` reads it with the rest of the header. The cos/sin tables (``rope``)
and DeepSeek-V2's attention scale (``mla.kq_scale``) use the values llama.cpp's context
computes (``llama_context``'s YaRN set-up, ``ggml``'s ``rope_yarn``), not the file's raw keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from autotune.errors import ModelFileError

# llama.cpp's defaults where the file does not say (only grok and mistral3 read the betas)
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


def _get_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class RopeScaling:
    """llama.cpp's context values: ``freq_scale`` (1 / the scaling factor), ``ext_factor`` (1
    for YaRN, else 0), ``attn_factor`` (its ``yarn_attn_factor``), the original context the
    YaRN ramp is computed for, and ``yarn_log_mul`` (DeepSeek-V2's ``mscale_all_dim``)."""

    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    orig_ctx: int = 0
    yarn_log_mul: float = 0.0
    beta_fast: float = YARN_BETA_FAST
    beta_slow: float = YARN_BETA_SLOW

    @property
    def magnitude(self) -> float:
        """What ggml multiplies every cos and sin by."""
        if self.ext_factor:
            return self.attn_factor * (1.0 + 0.1 * math.log(1.0 / self.freq_scale))
        return self.attn_factor

    def corr_dims(self, n_dims: int, base: float) -> tuple[float, float]:
        """The pair indices YaRN's ramp runs between (``ggml_rope_yarn_corr_dims``)."""

        def corr_dim(n_rot: float) -> float:
            return n_dims * math.log(self.orig_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))

        return max(0.0, math.floor(corr_dim(self.beta_fast))), min(n_dims - 1.0, math.ceil(corr_dim(self.beta_slow)))


def read_rope_scaling(key: Callable[[str, Any], Any], path: object, context_length: int,
                      deepseek_yarn: bool) -> RopeScaling:
    """The scaling a file's keys give (``key(name, default)`` reads ``<arch>.name``).

    ``deepseek_yarn``: the file's ``rope.scaling.yarn_log_multiplier`` is read as DeepSeek-V2's
    converter writes it (0.1 x ``mscale_all_dim``), and YaRN's mscale is ``mscale_all_dim``
    too (llama.cpp's special case for that architecture)."""
    kind = str(key("rope.scaling.type", "linear"))
    if kind not in ("none", "linear", "yarn"):
        raise ModelFileError(f"{path}: RoPE scaling {kind!r} is not supported")
    factor = float(key("rope.scaling.factor", key("rope.scale_linear", 0.0)))
    freq_scale = 1.0 if kind == "none" or factor == 0.0 else 1.0 / factor
    yarn_log_mul = float(key("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1 if deepseek_yarn else 0.0
    ext_factor = 1.0 if kind == "yarn" else 0.0
    attn_factor = 1.0
    if ext_factor:
        scale = 1.0 / freq_scale
        # DeepSeek-V2: mscale = mscale_all_dim, so their quotient is 1 (llama.cpp assumes 1 elsewhere)
        attn_factor = 1.0 if yarn_log_mul else _get_mscale(scale, 1.0)
        attn_factor /= 1.0 + 0.1 * math.log(scale)
    attn_factor *= float(key("rope.scaling.attn_factor", 1.0))
    return RopeScaling(freq_scale=freq_scale, ext_factor=ext_factor, attn_factor=attn_factor,
                       orig_ctx=int(key("rope.scaling.original_context_length", context_length)),
                       yarn_log_mul=yarn_log_mul)

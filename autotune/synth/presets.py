"""Model shapes the synthetic writer knows, and the quantization layouts it can apply."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gguf import GGMLQuantizationType as QType

from autotune.errors import AutotuneError


@dataclass(frozen=True)
class SynthPreset:
    """The shape of a MoE model of GGUF architecture ``arch`` (names follow the metadata keys)."""

    name: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_expert: int
    n_expert_used: int
    n_ff_expert: int
    n_ff: int  # the dense FFN size the real model declares (llama: the experts' own size)
    n_vocab: int
    context_length: int = 40960
    rope_freq_base: float = 1_000_000.0
    rms_eps: float = 1e-6
    arch: str = "qwen3moe"
    attn_bias: bool = False  # q, k and v biases
    n_ff_shexp: int = 0  # the shared expert's FFN width (0: none)
    shexp_gated: bool = False  # the shared expert scaled by sigmoid(ffn_gate_inp_shexp . x) (Qwen2-MoE)
    n_dense_lead: int = 0  # leading layers with a dense FFN of width n_ff
    rope_dims: int = 0  # RoPE over the first rope_dims of each head (0: all)
    gating: str = "softmax"  # the router's gate ("sigmoid": with a per-expert selection bias)
    norm_topk: bool | None = None  # the file's expert_weights_norm (None: not written)
    expert_weights_scale: float = 0.0  # the file's expert_weights_scale (0: not written)
    nextn_layers: int = 0  # NextN (multi-token prediction) layers after the others
    # DeepSeek-V2's latent attention (kv_lora_rank > 0): head_dim is a query's and key's head
    # (its last rope_dims turned by RoPE), head_dim_v a value's; q through a rank-q_lora_rank
    # projection where that is not 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    head_dim_v: int = 0
    yarn_factor: float = 0.0  # YaRN RoPE scaling by this factor (0: none) ...
    yarn_orig_ctx: int = 0  # ... from this original context ...
    yarn_mscale_all_dim: float = 0.0  # ... with DeepSeek's mscale_all_dim
    n_expert_groups: int = 0  # group-limited routing: the top k from the best n_group_used groups
    n_group_used: int = 0
    n_swa: int = 0  # a sliding window of this many tokens (on the layers the family's pattern says)
    attn_sinks: bool = False  # a sink logit per head, and a bias on the attention output
    expert_biases: bool = False  # biases on the router and on each expert's gate, up and down

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0


PRESETS = {
    preset.name: preset
    for preset in (
        # Seconds on a CPU: tests and CI.
        SynthPreset("tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=768, n_vocab=1024,
                    context_length=4096),
        # Mixtral-style (llama with experts: 8 experts, top-2, GQA), in seconds on a CPU.
        SynthPreset("mixtral-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=8, n_expert_used=2, n_ff_expert=512, n_ff=512, n_vocab=1024,
                    context_length=4096, rms_eps=1e-5, arch="llama"),
        # Qwen1.5-MoE-style: q/k/v biases, softmax top-4 of 16 without renormalization, a
        # sigmoid-gated shared expert twice an expert's width.
        SynthPreset("qwen2moe-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=768, n_vocab=1024,
                    context_length=4096, arch="qwen2moe", attn_bias=True, n_ff_shexp=512,
                    shexp_gated=True),
        # GLM-4.5-Air-style: a leading dense layer, q/k/v biases, RoPE over half of each head,
        # sigmoid top-4 of 16 with expert-bias correction, renormalized and scaled, a shared
        # expert, and one NextN layer the decoder skips.
        SynthPreset("glm4moe-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=768, n_vocab=1024,
                    context_length=4096, rms_eps=1e-5, arch="glm4moe", attn_bias=True,
                    n_ff_shexp=256, n_dense_lead=1, rope_dims=32, gating="sigmoid", norm_topk=True,
                    expert_weights_scale=2.5, nextn_layers=1),
        # DeepSeek-V2-Lite-style: latent attention with q directly, a leading dense layer,
        # softmax top-4 of 16 (not renormalized), two shared experts' width.
        SynthPreset("deepseek2-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=1, head_dim=96,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=768, n_vocab=1024,
                    context_length=4096, arch="deepseek2", n_ff_shexp=512, n_dense_lead=1, rope_dims=32,
                    kv_lora_rank=256, head_dim_v=64),
        # DeepSeek-V3-style: q through a low-rank projection, YaRN, sigmoid top-4 of 16 with
        # expert-bias correction within the best 2 of 4 expert groups, renormalized and scaled,
        # one shared expert.
        SynthPreset("deepseek3-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=1, head_dim=96,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=768, n_vocab=1024,
                    context_length=4096, arch="deepseek2", n_ff_shexp=256, n_dense_lead=1, rope_dims=32,
                    gating="sigmoid", norm_topk=True, expert_weights_scale=2.5, kv_lora_rank=256,
                    q_lora_rank=256, head_dim_v=64, yarn_factor=4.0, yarn_orig_ctx=1024,
                    yarn_mscale_all_dim=1.0, n_expert_groups=4, n_group_used=2),
        # gpt-oss-style: q/k/v and output biases, attention sinks, an 8-token sliding window on
        # every other layer, YaRN, a biased router weighted by a softmax over its top 4 of 16,
        # experts with biases and the clamped SwiGLU.
        SynthPreset("gpt-oss-tiny", n_layers=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=16, n_expert_used=4, n_ff_expert=256, n_ff=256, n_vocab=1024,
                    context_length=4096, rope_freq_base=150000.0, rms_eps=1e-5, arch="gpt-oss",
                    attn_bias=True, yarn_factor=4.0, yarn_orig_ctx=1024, n_swa=8, attn_sinks=True,
                    expert_biases=True),
        # About 0.15 GB: a real tuning run on a CPU in minutes (the README's demo).
        SynthPreset("small", n_layers=8, n_embd=512, n_head=8, n_head_kv=2, head_dim=64,
                    n_expert=32, n_expert_used=4, n_ff_expert=512, n_ff=1536, n_vocab=8192,
                    context_length=8192),
        # The exact shape of Qwen3-30B-A3B (about 19.8 GB at the default layout).
        SynthPreset("qwen3-30b-a3b", n_layers=48, n_embd=2048, n_head=32, n_head_kv=4,
                    head_dim=128, n_expert=128, n_expert_used=8, n_ff_expert=768, n_ff=6144,
                    n_vocab=151936),
        # The exact shape of DeepSeek-V2-Lite (27 layers, the first dense; q directly; YaRN x40).
        SynthPreset("deepseek-v2-lite", n_layers=27, n_embd=2048, n_head=16, n_head_kv=1, head_dim=192,
                    n_expert=64, n_expert_used=6, n_ff_expert=1408, n_ff=10944, n_vocab=102400,
                    context_length=163840, rope_freq_base=10000.0, arch="deepseek2", n_ff_shexp=2816,
                    n_dense_lead=1, rope_dims=64, kv_lora_rank=512, head_dim_v=128, yarn_factor=40.0,
                    yarn_orig_ctx=4096, yarn_mscale_all_dim=0.707),
        # The exact shapes of gpt-oss-20b and gpt-oss-120b (rows of 2880 are no whole K-quant
        # blocks: those roles are written Q8_0; --quant mxfp4_moe is the released layout).
        SynthPreset("gpt-oss-20b", n_layers=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
                    n_expert=32, n_expert_used=4, n_ff_expert=2880, n_ff=2880, n_vocab=201088,
                    context_length=131072, rope_freq_base=150000.0, rms_eps=1e-5, arch="gpt-oss",
                    attn_bias=True, yarn_factor=32.0, yarn_orig_ctx=4096, n_swa=128, attn_sinks=True,
                    expert_biases=True),
        SynthPreset("gpt-oss-120b", n_layers=36, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
                    n_expert=128, n_expert_used=4, n_ff_expert=2880, n_ff=2880, n_vocab=201088,
                    context_length=131072, rope_freq_base=150000.0, rms_eps=1e-5, arch="gpt-oss",
                    attn_bias=True, yarn_factor=32.0, yarn_orig_ctx=4096, n_swa=128, attn_sinks=True,
                    expert_biases=True),
        # The exact shape of Qwen3-235B-A22B (141.7 GiB at the default layout, 1.5 GiB a layer:
        # --layers 20 cuts it to 30.8 GiB).
        SynthPreset("qwen3-235b-a22b", n_layers=94, n_embd=4096, n_head=64, n_head_kv=4,
                    head_dim=128, n_expert=128, n_expert_used=8, n_ff_expert=1536, n_ff=12288,
                    n_vocab=151936),
    )
}

# Weight roles of a file of any preset (norms and the router are always F32).
ROLES = ("token_embd", "attn_q", "attn_k", "attn_v", "attn_output",
         "attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b", "attn_v_b",
         "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
         "ffn_gate", "ffn_up", "ffn_down", "nextn.eh_proj", "output")

# Q4_K_M as llama.cpp lays it out for this family: Q4_K, with Q6_K where precision pays.
_Q4_K_M = {role: QType.Q4_K for role in ROLES} | {
    "attn_v": QType.Q6_K, "ffn_down_exps": QType.Q6_K, "ffn_down_shexp": QType.Q6_K, "ffn_down": QType.Q6_K,
    "output": QType.Q6_K}

LAYOUTS: dict[str, dict[str, QType]] = {
    "q4_k_m": _Q4_K_M,
    # gpt-oss as released: MXFP4 routed experts, Q8_0 elsewhere
    "mxfp4_moe": {role: QType.Q8_0 for role in ROLES} | {
        role: QType.MXFP4 for role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")},
    "q4_k": {role: QType.Q4_K for role in ROLES},
    "q5_k": {role: QType.Q5_K for role in ROLES},
    "q6_k": {role: QType.Q6_K for role in ROLES},
    "q8_0": {role: QType.Q8_0 for role in ROLES},
    "f16": {role: QType.F16 for role in ROLES},
} | {qtype.name.lower(): {role: qtype for role in ROLES}
     for qtype in (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q2_K, QType.Q3_K, QType.IQ4_NL,
                   QType.IQ4_XS, QType.MXFP4)}


def get_preset(name: str, layers: int | None = None) -> SynthPreset:
    """The named shape, cut to its first ``layers`` layers when given."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise AutotuneError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if layers is None:
        return preset
    if not 1 <= layers <= preset.n_layers:
        raise AutotuneError(f"--layers must be 1 to {preset.n_layers} for preset {name} (got {layers})")
    return dataclasses.replace(preset, n_layers=layers)


def get_layout(name: str) -> dict[str, QType]:
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise AutotuneError(f"unknown quantization {name!r}; choose one of: {', '.join(LAYOUTS)}") from None

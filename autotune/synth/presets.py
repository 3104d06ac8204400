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
        # tiny with widths that are not whole 256-element super-blocks (288 = 9 blocks of 32,
        # 416 = 13), as gpt-oss's 2880 and DeepSeek-V2-Lite's 1408 are not: K-quant layouts
        # fall back on those rows to 32-element block types as llama.cpp's quantizer does.
        SynthPreset("ragged-tiny", n_layers=4, n_embd=288, n_head=4, n_head_kv=2, head_dim=64,
                    n_expert=16, n_expert_used=4, n_ff_expert=416, n_ff=768, n_vocab=1024,
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
        # The routing of the Qwen3-235B-A22B cut (128 experts, top-8, 20 layers) on a width the
        # CPU runs in minutes (0.2 GB): cache-policy studies of that routing (studies/hybrid).
        SynthPreset("routing-235b-small", n_layers=20, n_embd=512, n_head=8, n_head_kv=2, head_dim=64,
                    n_expert=128, n_expert_used=8, n_ff_expert=64, n_ff=512, n_vocab=8192, context_length=8192),
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
        # Real shapes of other families, from each model's published config.json (the release's
        # own, or a re-publication naming it as its source), every field as published.
        # Mixtral-8x7B-v0.1 (and -Instruct-v0.1, the same shape): the llama architecture with 8
        # experts, top-2, GQA 32/8; its experts' width is the file's feed_forward_length.
        SynthPreset("mixtral-8x7b", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
                    n_expert=8, n_expert_used=2, n_ff_expert=14336, n_ff=14336, n_vocab=32000,
                    context_length=32768, rms_eps=1e-5, arch="llama"),
        # GLM-4.5-Air (its config.json, as INTELLECT-3-Base, a fine-tune of it, re-publishes it):
        # 46 layers plus one NextN layer, the first dense (10944), 96 heads / 8 KV of 128 with
        # partial_rotary_factor 0.5 (RoPE over 64), q/k/v biases, no q/k norm, 128 experts of
        # 1408, top-8, sigmoid with expert bias (noaux_tc), renormalized, scale 1.0, one shared
        # expert, n_group 1 (no group limit).
        SynthPreset("glm-4.5-air", n_layers=46, n_embd=4096, n_head=96, n_head_kv=8, head_dim=128,
                    n_expert=128, n_expert_used=8, n_ff_expert=1408, n_ff=10944, n_vocab=151552,
                    context_length=131072, rms_eps=1e-5, arch="glm4moe", attn_bias=True,
                    n_ff_shexp=1408, n_dense_lead=1, rope_dims=64, gating="sigmoid", norm_topk=True,
                    expert_weights_scale=1.0, nextn_layers=1),
        # DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3; R1 has the same shape): 61
        # layers, the first 3 dense (18432), 128 heads of latent attention (q_lora 1536,
        # kv_lora 512, nope 128 + rope 64, v 128), 256 experts of 2048, top-8 within the best 4
        # of 8 groups, sigmoid with expert bias, renormalized, scale 2.5, one shared expert,
        # YaRN x40 from 4096 (mscale_all_dim 1.0). Its NextN layer is not written: llama.cpp's
        # converter drops it for deepseek2.
        SynthPreset("deepseek-v3", n_layers=61, n_embd=7168, n_head=128, n_head_kv=1, head_dim=192,
                    n_expert=256, n_expert_used=8, n_ff_expert=2048, n_ff=18432, n_vocab=129280,
                    context_length=163840, rope_freq_base=10000.0, arch="deepseek2", n_ff_shexp=2048,
                    n_dense_lead=3, rope_dims=64, gating="sigmoid", norm_topk=True, expert_weights_scale=2.5,
                    kv_lora_rank=512, q_lora_rank=1536, head_dim_v=128, yarn_factor=40.0, yarn_orig_ctx=4096,
                    yarn_mscale_all_dim=1.0, n_expert_groups=8, n_group_used=4),
        # Qwen2-57B-A14B(-Instruct) (config.json of the Qwen release): 28 layers, 28 heads / 4 KV
        # of 128, q/k/v biases, 64 experts of 2560, top-8, softmax not renormalized, a gated
        # shared expert of 20480 (eight experts' width).
        SynthPreset("qwen2-57b-a14b", n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, head_dim=128,
                    n_expert=64, n_expert_used=8, n_ff_expert=2560, n_ff=18944, n_vocab=151936,
                    context_length=32768, arch="qwen2moe", attn_bias=True, n_ff_shexp=20480, shexp_gated=True),
        # Qwen1.5-MoE-A2.7B (config.json of the Qwen release): 24 layers, 16 heads (no GQA) of
        # 128, 60 experts of 1408, top-4, a gated shared expert of 5632.
        SynthPreset("qwen1.5-moe-a2.7b", n_layers=24, n_embd=2048, n_head=16, n_head_kv=16, head_dim=128,
                    n_expert=60, n_expert_used=4, n_ff_expert=1408, n_ff=5632, n_vocab=151936,
                    context_length=8192, arch="qwen2moe", attn_bias=True, n_ff_shexp=5632, shexp_gated=True),
        # The exact shapes of gpt-oss-20b and gpt-oss-120b (rows of 2880 are no whole K-quant
        # blocks: those roles fall back as llama.cpp's quantizer does; --quant mxfp4_moe is the
        # released layout).
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

_ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b",
              "attn_v_b")
_SHARED_AND_DENSE = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate", "ffn_up", "ffn_down")
# Low-bit mixes like the published "dynamic" files of large MoE models: the routed experts,
# nearly all the bytes, at few bits; what every token reads (attention, shared expert, dense
# layers, the head) kept high. Where a role's rows are not whole blocks of its type the
# writer falls back as llama.cpp's quantizer does (``writer.FALLBACK_TYPES``: 1408-wide experts'
# down projection Q3_K -> IQ4_NL).
# Like Unsloth's UD-Q2_K_XL (an approximation by role, not their per-tensor choice): experts'
# gate and up Q2_K and down Q3_K; attention Q4_K with the value and latent paths Q6_K; shared
# experts and dense FFNs Q4_K (down Q6_K); embedding Q6_K, output Q8_0.
_UD_Q2_K_XL = {role: QType.Q4_K for role in ROLES} | {
    "ffn_gate_exps": QType.Q2_K, "ffn_up_exps": QType.Q2_K, "ffn_down_exps": QType.Q3_K,
    "attn_v": QType.Q6_K, "attn_kv_a_mqa": QType.Q6_K, "attn_k_b": QType.Q6_K, "attn_v_b": QType.Q6_K,
    "ffn_down_shexp": QType.Q6_K, "ffn_down": QType.Q6_K, "token_embd": QType.Q6_K, "output": QType.Q8_0}
# IQ4_XS experts, with attention, shared experts and dense FFNs Q5_K (value paths Q6_K), the
# embedding Q4_K and the output Q6_K: an IQ4_XS file that keeps what every token reads higher.
_IQ4_XS_MIX = {role: QType.IQ4_XS for role in ROLES} | {role: QType.Q5_K for role in _ATTENTION + _SHARED_AND_DENSE} | {
    "attn_v": QType.Q6_K, "attn_kv_a_mqa": QType.Q6_K, "attn_v_b": QType.Q6_K, "token_embd": QType.Q4_K,
    "output": QType.Q6_K}
# llama.cpp's MXFP4_MOE: MXFP4 experts, Q8_0 everything else.
_MXFP4_MOE = {role: QType.Q8_0 for role in ROLES} | {
    "ffn_gate_exps": QType.MXFP4, "ffn_up_exps": QType.MXFP4, "ffn_down_exps": QType.MXFP4}

LAYOUTS: dict[str, dict[str, QType]] = {
    "q4_k_m": _Q4_K_M,
    "ud-q2_k_xl": _UD_Q2_K_XL,
    "iq4_xs-mix": _IQ4_XS_MIX,
    "mxfp4_moe": _MXFP4_MOE,
    "q4_k": {role: QType.Q4_K for role in ROLES},
    "q5_k": {role: QType.Q5_K for role in ROLES},
    "q6_k": {role: QType.Q6_K for role in ROLES},
    "q8_0": {role: QType.Q8_0 for role in ROLES},
    "f16": {role: QType.F16 for role in ROLES},
} | {qtype.name.lower(): {role: qtype for role in ROLES}
     for qtype in (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q2_K, QType.Q3_K, QType.IQ4_NL,
                   QType.IQ4_XS, QType.MXFP4, QType.IQ2_XXS, QType.IQ3_XXS, QType.IQ3_S, QType.IQ2_XS,
                   QType.IQ2_S, QType.IQ1_S, QType.IQ1_M)}


def get_preset(name: str, layers: int | None = None) -> SynthPreset:
    """The named shape, cut to its first ``layers`` layers when given (of which the last has
    routed experts, however many leading layers the shape has dense)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise AutotuneError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if layers is None:
        return preset
    if not 1 <= layers <= preset.n_layers:
        raise AutotuneError(f"--layers must be 1 to {preset.n_layers} for preset {name} (got {layers})")
    # a cut keeps one layer of routed experts at least (DeepSeek-V3's first 3 are dense)
    return dataclasses.replace(preset, n_layers=layers, n_dense_lead=min(preset.n_dense_lead, layers - 1))


def get_layout(name: str) -> dict[str, QType]:
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise AutotuneError(f"unknown quantization {name!r}; choose one of: {', '.join(LAYOUTS)}") from None

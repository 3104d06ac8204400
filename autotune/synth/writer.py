"""Write a random-weight MoE GGUF (qwen3moe, Mixtral-style llama, qwen2moe, glm4moe, deepseek2, gpt-oss) that
llama.cpp loads and runs.

Speed is what matters (a 20 GB file in well under two minutes), so weights are not
quantized tensor by tensor: each (type, scale) gets a pool of real, well-scaled
quantized blocks, a long "tape" is gathered from it once, and every tensor is a
window of that tape. Only the router (routing skew), the token embedding's channel 0
(which the router reads as a bias, see ``skew``) and, for temporal routing, the first
layer's attention (a recency window, see ``temporal``) are crafted.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFWriter, RopeScalingType
from gguf.constants import GGML_QUANT_SIZES

from autotune.cache_runtime.families import FAMILIES
from autotune.errors import AutotuneError
from autotune.quants import quantize
from autotune.synth import skew as skew_model
from autotune.synth import temporal
from autotune.synth.presets import SynthPreset, get_layout, get_preset
from autotune.synth.real_routing import MIN_EXPERTS
from autotune.synth.vocab import build_vocabulary

MASSIVE_ACTIVATION = 8.0  # channel 0 of every token embedding
ATTN_BIAS_STD = 0.5  # q, k and v biases
SINK_STD = 1.0  # each head's attention sink logit
ROUTER_BIAS_STD = 0.5  # the router's bias (gpt-oss)
# the experts' gate and up biases: large enough that gpt-oss's clamp at 7 bites now and then
EXPERT_BIAS_STD = 3.0
SELECTION_BIAS_STD = 0.02  # the sigmoid router's per-expert selection bias
RESIDUAL_STEP = 0.05  # std each attention / MoE output adds to the residual stream
ROUTING_MODES = ("temporal", "static")


def default_routing(shape: SynthPreset) -> str:
    """Temporal where the published figures scale to the shape (``real_routing.MIN_EXPERTS``)
    and its attention has the q/k/v projections the recency window is crafted in (not MLA),
    else static."""
    return "temporal" if shape.n_expert >= MIN_EXPERTS and not shape.mla else "static"


# A 256-element type's stand-in for rows that are not whole blocks of it, as llama.cpp's
# quantizer picks it (llama-quant.cpp); any other type's is Q8_0.
FALLBACK_TYPES = {qtype: QType.IQ4_NL for qtype in (QType.Q2_K, QType.Q3_K, QType.IQ4_XS, QType.IQ2_XXS,
                                                   QType.IQ2_XS, QType.IQ2_S, QType.IQ3_XXS, QType.IQ3_S,
                                                   QType.IQ1_S, QType.IQ1_M)} | {
    QType.Q4_K: QType.Q5_0, QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0}
POOL_BLOCKS = 8192
MAX_TAPE_BLOCKS = 1 << 20
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _block_elements(qtype: QType) -> int:
    """Elements per block; float types are handled in rows of 256 like the K-quants."""
    return 256 if qtype in (QType.F16, QType.F32) else GGML_QUANT_SIZES[qtype][0]


def _block_bytes(qtype: QType) -> int:
    if qtype in (QType.F16, QType.F32):
        return 256 * (2 if qtype == QType.F16 else 4)
    return GGML_QUANT_SIZES[qtype][1]


class BlockTape:
    """Random blocks of one type and scale, handed out as windows of a pre-gathered tape."""

    def __init__(
        self,
        qtype: QType,
        scale: float,
        rng: np.random.Generator,
        tape_blocks: int,
        first_value: float | None = None,
    ):
        self.qtype = qtype
        self.rng = rng
        values = scale * rng.standard_normal((POOL_BLOCKS, _block_elements(qtype)), dtype=np.float32)
        if first_value is not None:
            values[:, 0] = first_value
        pool = quantize(values, qtype).reshape(POOL_BLOCKS, _block_bytes(qtype))
        self.tape = pool[rng.integers(0, POOL_BLOCKS, tape_blocks)]

    def blocks(self, n_blocks: int) -> np.ndarray:
        """n_blocks raw blocks, shape (n_blocks, block_bytes)."""
        if n_blocks <= len(self.tape):
            start = int(self.rng.integers(0, len(self.tape) - n_blocks + 1))
            return self.tape[start : start + n_blocks]
        reps = math.ceil(n_blocks / len(self.tape))
        return np.concatenate([self.tape] * reps)[:n_blocks]


@dataclass
class SynthReport:
    path: Path
    preset: str
    quant: str
    routing: str
    skew: float
    bias_spread: float
    slow_strength: float  # std of the recency window's part of the router logits (0: static routing)
    file_bytes: int
    seconds: float


class _SynthWriter:
    def __init__(self, preset: SynthPreset, quant: str, skew: float, seed: int, routing: str):
        self.p = preset
        self.layout = get_layout(quant)
        self.traits = FAMILIES[preset.arch].traits
        self.rng = np.random.default_rng(seed)
        self.tapes: dict[tuple[QType, float, float | None], BlockTape] = {}
        largest = max(preset.n_vocab, preset.n_expert * preset.n_ff_expert) * preset.n_embd
        self.tape_blocks = min(MAX_TAPE_BLOCKS, largest // 32)
        self.skew = skew
        self.routing = routing
        self.window = temporal.recency_window(preset.head_dim, preset.rope_freq_base)
        if routing == "temporal":
            fit = temporal.calibrate(preset.n_expert, preset.n_expert_used, self.window, seed=seed)
            self.bias_spread, self.slow_strength = skew * fit.spread, fit.strength
            self.biases = temporal.layer_biases(preset.n_layers, preset.n_expert, self.bias_spread, self.rng)
        else:
            base_spread = skew_model.calibrate_bias_spread(preset.n_expert, preset.n_expert_used, seed=seed)
            self.bias_spread, self.slow_strength = skew * base_spread, 0.0
            self.biases = skew_model.layer_biases(preset.n_layers, preset.n_expert, self.bias_spread, self.rng)

    def _type_for(self, role: str, cols: int) -> QType:
        """The role's type, or where its rows are not whole blocks of it (an MLA head's 128
        no-RoPE dims, 1408-wide experts under a K-quant) the 32-element type llama.cpp's
        quantizer falls back to (``FALLBACK_TYPES``), else F16."""
        qtype = self.layout[role]
        if cols % _block_elements(qtype) == 0 or qtype == QType.F32:
            return qtype
        fallback = FALLBACK_TYPES.get(qtype, QType.Q8_0)
        return fallback if cols % _block_elements(fallback) == 0 else QType.F16

    def _quantized(self, role: str, rows: int, cols: int, scale: float, first_value: float | None = None) -> tuple[np.ndarray, QType]:
        """A (rows, cols) weight of this role's type (``_type_for``) as raw bytes shaped (rows,
        row_bytes); float rows shorter than the tape's blocks as floats."""
        qtype = self._type_for(role, cols)
        if cols % _block_elements(qtype):
            values = scale * self.rng.standard_normal((rows, cols), dtype=np.float32)
            return values.astype(np.float16 if qtype == QType.F16 else np.float32), qtype
        per_row = cols // _block_elements(qtype)
        key = (qtype, scale, first_value)
        if key not in self.tapes:
            self.tapes[key] = BlockTape(qtype, scale, self.rng, self.tape_blocks, first_value)
        data = self.tapes[key].blocks(rows * per_row).reshape(rows, per_row * _block_bytes(qtype))
        return data, qtype

    def _crafted(self, role: str, values: np.ndarray) -> tuple[np.ndarray, QType]:
        """``values`` in this role's type: quantized raw bytes (rows, row_bytes), or F16/F32 floats."""
        qtype = self._type_for(role, values.shape[1])
        if qtype in (QType.F16, QType.F32):
            return values.astype(np.float16 if qtype == QType.F16 else np.float32), qtype
        return quantize(values, qtype).reshape(values.shape[0], -1), qtype

    def _window_reader(self, role: str, n_heads: int) -> tuple[np.ndarray, QType]:
        """Q or K of the recency window: each head reads channel 0 into the window's pair dims."""
        p = self.p
        values = np.zeros((n_heads, p.head_dim, p.n_embd), dtype=np.float32)
        values[:, list(self.window.pairs), 0] = 1.0
        return self._crafted(role, values.reshape(n_heads * p.head_dim, p.n_embd))

    def _window_attention(self, embd_rms: float):
        """Layer 0's attention as a recency window whose mean of V reaches the residual stream
        with variance ``slow_strength**2`` per channel (the token embedding's is 1)."""
        p = self.p
        q_dim, kv_dim = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        in_scale = 1.0 / math.sqrt(p.n_embd)
        v_variance = in_scale**2 * (p.n_embd - 1) / embd_rms**2
        head_variance = v_variance * float((self.window.weights(p.context_length) ** 2).sum())
        out_scale = self.slow_strength / math.sqrt(q_dim * head_variance)
        data, qtype = self._window_reader("attn_q", p.n_head)
        yield "attn_q", (q_dim, p.n_embd), data, qtype
        data, qtype = self._window_reader("attn_k", p.n_head_kv)
        yield "attn_k", (kv_dim, p.n_embd), data, qtype
        data, qtype = self._quantized("attn_v", kv_dim, p.n_embd, in_scale, first_value=0.0)
        yield "attn_v", (kv_dim, p.n_embd), data, qtype
        data, qtype = self._quantized("attn_output", p.n_embd, q_dim, out_scale)
        yield "attn_output", (p.n_embd, q_dim), data, qtype

    def _mla_attention(self):
        """Latent attention's weights, with the split wk_b, wv_b llama.cpp's converter writes."""
        p = self.p
        in_scale = 1.0 / math.sqrt(p.n_embd)
        q_dim, out_dim, nope = p.n_head * p.head_dim, p.n_head * p.head_dim_v, p.head_dim - p.rope_dims
        if p.q_lora_rank:
            matrices = [("attn_q_a", (p.q_lora_rank, p.n_embd), in_scale),
                        ("attn_q_b", (q_dim, p.q_lora_rank), 1.0 / math.sqrt(p.q_lora_rank))]
        else:
            matrices = [("attn_q", (q_dim, p.n_embd), in_scale)]
        matrices += [("attn_kv_a_mqa", (p.kv_lora_rank + p.rope_dims, p.n_embd), in_scale),
                     ("attn_k_b", (p.n_head, p.kv_lora_rank, nope), 1.0 / math.sqrt(nope)),
                     ("attn_v_b", (p.n_head, p.head_dim_v, p.kv_lora_rank), 1.0 / math.sqrt(p.kv_lora_rank)),
                     ("attn_output", (p.n_embd, out_dim), RESIDUAL_STEP / math.sqrt(out_dim))]
        for name, shape, scale in matrices:
            yield (name, shape, *self._quantized(name, math.prod(shape[:-1]), shape[-1], scale))
        norms = (("attn_q_a_norm", p.q_lora_rank), ("attn_kv_a_norm", p.kv_lora_rank))
        for name, n in norms:
            if n:
                yield name, (n,), np.ones(n, dtype=np.float32), QType.F32

    def _window_norm(self) -> np.ndarray:
        weight = np.ones(self.p.head_dim, dtype=np.float32)
        weight[list(self.window.pairs)] = self.window.norm_weight
        return weight

    def tensors(self):
        """(name, numpy shape, raw array, type) for every tensor, lazily."""
        p = self.p
        q_dim, kv_dim = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
        in_scale = 1.0 / math.sqrt(p.n_embd)

        embd, qtype = self._quantized("token_embd", p.n_vocab, p.n_embd, 1.0)
        first, _ = self._quantized("token_embd", p.n_vocab, _block_elements(qtype), 1.0, MASSIVE_ACTIVATION)
        embd = embd.copy()
        embd[:, : first.shape[1]] = first
        yield "token_embd.weight", (p.n_vocab, p.n_embd), embd, qtype

        embd_rms = math.sqrt((MASSIVE_ACTIVATION**2 + p.n_embd - 1) / p.n_embd)
        # the router's input: the embedding plus the window's slow component (variance strength^2)
        rms = math.sqrt((MASSIVE_ACTIVATION**2 + (p.n_embd - 1) * (1 + self.slow_strength**2)) / p.n_embd)
        x0 = MASSIVE_ACTIVATION / rms  # channel 0 of the router's (RMS-normalised) input
        noise_std = rms / math.sqrt(p.n_embd - 1)  # the token's own logit noise: unit variance
        for il in range(p.n_layers + p.nextn_layers):
            blk = f"blk.{il}."
            yield blk + "attn_norm.weight", (p.n_embd,), ones(p.n_embd), QType.F32
            window = il == 0 and self.slow_strength > 0
            if window:
                attention = self._window_attention(embd_rms)
            elif p.mla:
                attention = self._mla_attention()
            else:
                attention = (
                    (name, (rows, cols), *self._quantized(name, rows, cols, scale))
                    for name, rows, cols, scale in (
                        ("attn_q", q_dim, p.n_embd, in_scale),
                        ("attn_k", kv_dim, p.n_embd, in_scale),
                        ("attn_v", kv_dim, p.n_embd, in_scale),
                        ("attn_output", p.n_embd, q_dim, RESIDUAL_STEP / math.sqrt(q_dim)),
                    )
                )
            for name, shape, data, qtype in attention:
                yield f"{blk}{name}.weight", shape, data, qtype
            if p.attn_bias:
                for name, n in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                    yield f"{blk}{name}.bias", (n,), ATTN_BIAS_STD * self.rng.standard_normal(n, dtype=np.float32), QType.F32
            if p.attn_sinks:  # gpt-oss: sinks and the output's bias
                yield blk + "attn_sinks.weight", (p.n_head,), self._normal(SINK_STD, p.n_head), QType.F32
                yield blk + "attn_output.bias", (p.n_embd,), self._normal(RESIDUAL_STEP, p.n_embd), QType.F32
            if self.traits.qk_norm:
                norm = self._window_norm() if window else ones(p.head_dim)
                yield blk + "attn_q_norm.weight", (p.head_dim,), norm, QType.F32
                yield blk + "attn_k_norm.weight", (p.head_dim,), norm, QType.F32
            yield f"{blk}{self.traits.ffn_norm}.weight", (p.n_embd,), ones(p.n_embd), QType.F32
            if il < p.n_dense_lead:
                yield from self._ffn(blk, "", p.n_ff)
            else:
                yield from self._experts(blk, il, x0, noise_std)
            if il >= p.n_layers:
                yield from self._nextn(blk)
        yield "output_norm.weight", (p.n_embd,), ones(p.n_embd), QType.F32
        data, qtype = self._quantized("output", p.n_vocab, p.n_embd, in_scale)
        yield "output.weight", (p.n_vocab, p.n_embd), data, qtype

    def _normal(self, std: float, *shape: int) -> np.ndarray:
        return std * self.rng.standard_normal(shape, dtype=np.float32)

    def _expert_biases(self, blk: str):
        """gpt-oss's router bias and each expert's gate, up and down biases."""
        p = self.p
        yield blk + "ffn_gate_inp.bias", (p.n_expert,), self._normal(ROUTER_BIAS_STD, p.n_expert), QType.F32
        for name, width, std in (("ffn_gate_exps", p.n_ff_expert, EXPERT_BIAS_STD),
                                 ("ffn_up_exps", p.n_ff_expert, EXPERT_BIAS_STD),
                                 ("ffn_down_exps", p.n_embd, RESIDUAL_STEP)):
            yield f"{blk}{name}.bias", (p.n_expert, width), self._normal(std, p.n_expert, width), QType.F32

    def _ffn(self, blk: str, suffix: str, width: int):
        """A SwiGLU FFN's gate, up and down (``ffn_gate{suffix}``...; stacks of every expert for ``_exps``)."""
        p = self.p
        stack = (p.n_expert,) if suffix == "_exps" else ()
        down_scale = RESIDUAL_STEP / (0.6 * math.sqrt(width))
        for name, rows, cols, scale in ((f"ffn_gate{suffix}", width, p.n_embd, 1.0 / math.sqrt(p.n_embd)),
                                        (f"ffn_up{suffix}", width, p.n_embd, 1.0 / math.sqrt(p.n_embd)),
                                        (f"ffn_down{suffix}", p.n_embd, width, down_scale)):
            data, qtype = self._quantized(name, math.prod(stack) * rows, cols, scale)
            yield f"{blk}{name}.weight", (*stack, rows, cols), data, qtype

    def _experts(self, blk: str, il: int, x0: float, noise_std: float):
        """A MoE layer's router (crafted: see ``skew``), routed experts and shared expert."""
        p = self.p
        router = noise_std * self.rng.standard_normal((p.n_expert, p.n_embd), dtype=np.float32)
        router[:, 0] = self.biases[il % p.n_layers] / x0
        yield blk + "ffn_gate_inp.weight", (p.n_expert, p.n_embd), router, QType.F32
        if p.gating == "sigmoid":
            bias = SELECTION_BIAS_STD * self.rng.standard_normal(p.n_expert, dtype=np.float32)
            yield blk + "exp_probs_b.bias", (p.n_expert,), bias, QType.F32
        yield from self._ffn(blk, "_exps", p.n_ff_expert)
        if p.expert_biases:
            yield from self._expert_biases(blk)
        if p.n_ff_shexp:
            if p.shexp_gated:
                gate = self.rng.standard_normal(p.n_embd, dtype=np.float32) / math.sqrt(p.n_embd)
                yield blk + "ffn_gate_inp_shexp.weight", (p.n_embd,), gate, QType.F32
            yield from self._ffn(blk, "_shexp", p.n_ff_shexp)

    def _nextn(self, blk: str):
        """A NextN layer's own tensors (llama.cpp's decoder loads none of them)."""
        p = self.p
        data, qtype = self._quantized("nextn.eh_proj", p.n_embd, 2 * p.n_embd, 1.0 / math.sqrt(2 * p.n_embd))
        yield blk + "nextn.eh_proj.weight", (p.n_embd, 2 * p.n_embd), data, qtype
        for name in ("enorm", "hnorm", "shared_head_norm"):
            yield f"{blk}nextn.{name}.weight", (p.n_embd,), np.ones(p.n_embd, dtype=np.float32), QType.F32

    def _write_family_metadata(self, writer: GGUFWriter) -> None:
        """The keys of the preset's family parts (shared expert, dense layers, partial RoPE,
        the router's gate, NextN layers), each only where the preset has the part."""
        p, key = self.p, f"{self.p.arch}."
        if p.n_ff_shexp and p.shexp_gated:  # Qwen2-MoE states its one shared expert's width
            writer.add_uint32(key + "expert_shared_feed_forward_length", p.n_ff_shexp)
        elif p.n_ff_shexp:  # GLM-4.5 and DeepSeek a count of experts' widths
            writer.add_uint32(key + "expert_shared_count", p.n_ff_shexp // p.n_ff_expert)
        if p.n_dense_lead:
            writer.add_uint32(key + "leading_dense_block_count", p.n_dense_lead)
        if p.rope_dims:
            writer.add_rope_dimension_count(p.rope_dims)
        if p.gating != "softmax":
            writer.add_uint32(key + "expert_gating_func", {"sigmoid": 2}[p.gating])
        if p.norm_topk is not None:
            writer.add_bool(key + "expert_weights_norm", p.norm_topk)
        if p.expert_weights_scale:
            writer.add_float32(key + "expert_weights_scale", p.expert_weights_scale)
        if p.nextn_layers:
            writer.add_uint32(key + "nextn_predict_layers", p.nextn_layers)
        if p.n_expert_groups:
            writer.add_expert_group_count(p.n_expert_groups)
            writer.add_expert_group_used_count(p.n_group_used)
        if p.yarn_factor:
            writer.add_rope_scaling_type(RopeScalingType.YARN)
            writer.add_rope_scaling_factor(p.yarn_factor)
            writer.add_rope_scaling_orig_ctx_len(p.yarn_orig_ctx)
            if p.yarn_mscale_all_dim:  # as DeepSeek-V2's converter writes it (llama.cpp divides it by 0.1 again)
                writer.add_rope_scaling_yarn_log_mul(0.1 * p.yarn_mscale_all_dim)
        if p.n_swa:
            writer.add_sliding_window(p.n_swa)
        if p.mla:  # q_lora_rank 0 (q directly) too: llama.cpp requires the key unless 26 or 27 layers
            writer.add_q_lora_rank(p.q_lora_rank)
            writer.add_kv_lora_rank(p.kv_lora_rank)
            writer.add_key_length_mla(p.head_dim)
            writer.add_value_length_mla(p.head_dim_v)

    def write_metadata(self, writer: GGUFWriter, preset_name: str, quant: str, seed: int) -> None:
        p = self.p
        writer.add_name(f"autotune synthetic {preset_name}")
        writer.add_block_count(p.n_layers + p.nextn_layers)
        writer.add_context_length(p.context_length)
        writer.add_embedding_length(p.n_embd)
        writer.add_feed_forward_length(p.n_ff)
        writer.add_head_count(p.n_head)
        # MLA as llama.cpp's converter writes it: one KV head of the latent plus the RoPE key
        writer.add_head_count_kv(1 if p.mla else p.n_head_kv)
        writer.add_key_length(p.kv_lora_rank + p.rope_dims if p.mla else p.head_dim)
        writer.add_value_length(p.kv_lora_rank if p.mla else p.head_dim)
        writer.add_rope_freq_base(p.rope_freq_base)
        writer.add_layer_norm_rms_eps(p.rms_eps)
        writer.add_expert_count(p.n_expert)
        writer.add_expert_used_count(p.n_expert_used)
        if self.traits.expert_ff_key != "feed_forward_length":  # else n_ff is the experts' size
            writer.add_uint32(f"{p.arch}.{self.traits.expert_ff_key}", p.n_ff_expert)
        self._write_family_metadata(writer)
        vocab = build_vocabulary(p.n_vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHATML_TEMPLATE)
        writer.add_string("autotune.synth.preset", preset_name)
        writer.add_string("autotune.synth.quant", quant)
        writer.add_uint32("autotune.synth.seed", seed)
        writer.add_string("autotune.synth.routing", self.routing)
        writer.add_float32("autotune.synth.skew", self.skew)
        writer.add_float32("autotune.synth.bias_spread", self.bias_spread)
        writer.add_float32("autotune.synth.slow_strength", self.slow_strength)


def _wait_for_write_back(path: Path) -> None:
    """Flush the file to disk: the rename after it is then crash-safe, and the write-back does
    not run beside the first measurements on the model (it slowed llama-bench by up to a third
    for a minute after an 18 GiB model was written; studies/skew0)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _check_output(path: Path, partial: Path) -> None:
    """Fail before any work where the file cannot be written: a folder in its place, a file in
    place of a folder above it, or a folder that takes no new files. Missing folders are made."""
    if path.is_dir():
        raise AutotuneError(f"cannot write {path}: it is a folder; name the .gguf file to write")
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise AutotuneError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.open("wb").close()  # the writer's own first step, tried at once
        partial.unlink()
    except OSError as exc:
        raise AutotuneError(f"cannot write {path}: no new file can be made in {path.parent} "
                            f"({exc.strerror or exc})") from None


def write_synthetic_model(
    path: str | Path,
    preset: str = "tiny",
    quant: str = "q4_k_m",
    skew: float = 1.0,
    seed: int = 0,
    routing: str | None = None,
    layers: int | None = None,
) -> SynthReport:
    """Write a random-weight MoE GGUF of the preset's shape and architecture.

    ``routing`` "temporal" (the default from 32 experts on: ``default_routing``) calibrates static concentration and temporal locality
    to a real model's figures (``temporal``); "static" gives a fixed per-expert bias plus
    independent noise (``skew``). ``skew`` scales the static bias: 1 calibrated, 0 none
    (with static routing: uniform). ``layers`` cuts the preset to its first layers.
    """
    started = time.perf_counter()
    path = Path(path)
    if skew < 0:
        raise AutotuneError(f"--skew must be 0 or more (got {skew})")
    shape = get_preset(preset, layers)
    routing = routing or default_routing(shape)
    if routing not in ROUTING_MODES:
        raise AutotuneError(f"unknown routing {routing!r}; choose one of: {', '.join(ROUTING_MODES)}")
    if routing == "temporal" and shape.n_expert < MIN_EXPERTS:
        raise AutotuneError(f"temporal routing needs {MIN_EXPERTS} experts or more (the published figures "
                            f"scale to no fewer); preset {preset} has {shape.n_expert}: use --routing static")
    if routing == "temporal" and shape.mla:
        raise AutotuneError(f"temporal routing crafts a q/k/v attention; preset {preset} has latent attention "
                            "(MLA): use --routing static")
    partial = path.with_name(path.name + ".partial")
    _check_output(path, partial)
    synth = _SynthWriter(shape, quant, skew, seed, routing)
    tensors = list(synth.tensors())
    writer = GGUFWriter(partial, shape.arch)
    synth.write_metadata(writer, preset, quant, seed)
    for name, shape, data, qtype in tensors:
        raw = None if qtype in (QType.F32, QType.F16) and data.dtype != np.uint8 else qtype
        byte_shape = (*shape[:-1], data.shape[-1]) if raw is not None else shape
        writer.add_tensor_info(name, byte_shape, data.dtype, data.nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, _, data, _ in tensors:
        writer.write_tensor_data(np.ascontiguousarray(data))
    writer.close()
    _wait_for_write_back(partial)
    partial.replace(path)  # a crash never leaves a half-written file under the final name
    return SynthReport(
        path=path,
        preset=preset,
        quant=quant,
        routing=routing,
        skew=skew,
        bias_spread=synth.bias_spread,
        slow_strength=synth.slow_strength,
        file_bytes=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )

"""Qwen2-MoE / Qwen1.5-MoE (``qwen2moe``): pre-norm attention with q/k/v biases, NeoX RoPE and
no q/k norm, then routed experts (softmax top-k, never renormalized: llama.cpp's builder fixes
it, whatever the file says) plus a shared expert of its own width
(``expert_shared_feed_forward_length``) scaled by sigmoid(``ffn_gate_inp_shexp`` . x).
The same forward pass as ``qwen3moe``: the biases and the shared expert are in the weights."""

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

FAMILY = Family("qwen2moe", ArchTraits(rope_neox=True, norm_topk=False, qk_norm=False), routed_moe_forward)

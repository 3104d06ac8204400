"""gpt-oss-20b / 120b (``gpt-oss``, llama.cpp's ``openai-moe`` builder): pre-norm attention
with q/k/v and output biases, NeoX RoPE (YaRN in the released files), a learned sink logit per
head in the softmax, and a sliding window of ``attention.sliding_window`` tokens on every other
layer from the first (the file's ``sliding_window_pattern`` where it has one); the FFN norm is
``post_attention_norm``. The router has a bias; the top k of its raw logits are weighted by a
softmax over those k (llama.cpp's SOFTMAX_WEIGHT). Each expert has gate, up and down biases
and the clamped SwiGLU (``torch_ops.glu``). No shared expert, no dense layers.
The same forward pass as ``qwen3moe``: the parts are in the traits, the weights and the ops."""

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

FAMILY = Family("gpt-oss", ArchTraits(rope_neox=True, norm_topk=False, qk_norm=False, gating="softmax_weight",
                                      ffn_norm="post_attention_norm", expert_act="swiglu_oai", swa_pattern=2),
                routed_moe_forward)

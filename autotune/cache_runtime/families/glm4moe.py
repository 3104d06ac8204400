"""GLM-4.5 / GLM-4.5-Air (``glm4moe``): pre-norm attention with q/k/v biases, NeoX RoPE over the
first ``rope.dimension_count`` dimensions of each head, q/k norm where the file has it; the
FFN norm is ``post_attention_norm``. The first ``leading_dense_block_count`` layers have a
dense FFN; the others route with a sigmoid gate, the top k chosen by the gate plus the
expert-bias correction (``exp_probs_b``) but weighted by the unbiased gate, renormalized where
``expert_weights_norm`` says, times ``expert_weights_scale``, plus an unscaled shared
expert. The file's NextN layers (``nextn_predict_layers``, after the others) are skipped, as
llama.cpp's decoder skips them."""

from autotune.cache_runtime.families.blocks import routed_moe_forward
from autotune.cache_runtime.families.family import ArchTraits, Family

FAMILY = Family("glm4moe", ArchTraits(rope_neox=True, norm_topk=False, qk_norm=False, gating="sigmoid",
                                      ffn_norm="post_attention_norm"), routed_moe_forward)

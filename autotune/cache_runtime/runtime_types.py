"""The GGML weight types the runtime has kernels for: torch-free, so that the tuner and
``autotune inspect`` can say what the runtime reads without loading torch."""

RUNTIME_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                 "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                 "IQ1_S", "IQ1_M")

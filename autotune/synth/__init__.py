"""Random-weight qwen3moe GGUF models with a realistic shape, quantization and routing skew."""

from autotune.synth.presets import PRESETS, SynthPreset
from autotune.synth.writer import SynthReport, write_synthetic_model

__all__ = ["PRESETS", "SynthPreset", "SynthReport", "write_synthetic_model"]

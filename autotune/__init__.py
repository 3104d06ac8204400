"""autotune: measure and pick the fastest way to run a MoE GGUF model under a VRAM cap."""

__version__ = "0.1.0"

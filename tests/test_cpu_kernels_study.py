"""The CPU kernel micro-benchmark measures what it says, on the tiny shape."""

from __future__ import annotations

import pytest
import torch

from autotune.cache_runtime.dequant import row_bytes
from autotune.studies.cpu_kernels import kernel_read_rate, ram_read_bandwidth, random_stack
from autotune.synth.presets import get_preset

pytest.importorskip("llama_cpp")  # its libraries bring ggml's CPU kernels


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_random_stacks_are_well_formed_blocks(qtype: str) -> None:
    stack = random_stack(3, 8, 512, qtype)
    assert stack.data.shape == (3, 8, row_bytes(qtype, 512))
    values = stack.dequantize()
    assert values.shape == (3, 8, 512) and torch.isfinite(values).all() and values.abs().max() > 0


def test_the_kernel_rate_counts_the_bytes_of_the_experts_each_step_reads() -> None:
    preset = get_preset("tiny")
    rate = kernel_read_rate("tiny", "Q6_K", n_threads=1, steps=3)
    per_expert = 3 * preset.n_ff_expert * row_bytes("Q6_K", preset.n_embd)  # square here: n_ff = n_embd
    assert rate.expert_bytes == per_expert and rate.experts_per_step == preset.n_expert_used
    assert 0 < rate.best_step_seconds <= rate.step_seconds
    assert rate.bytes_per_second == pytest.approx(preset.n_expert_used * per_expert / rate.step_seconds)


def test_ram_bandwidth_is_a_rate_and_leaves_torch_threads_as_they_were() -> None:
    threads = torch.get_num_threads()
    assert ram_read_bandwidth(1, nbytes=2**24, repeats=3) > 1e8  # any machine reads 100 MB/s
    assert torch.get_num_threads() == threads

"""The CPU kernel micro-benchmark measures what it says, on the tiny shape."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

from autotune.cache_runtime.dequant import row_bytes
from autotune.cache_runtime.ggml_cpu import cpu_features
from autotune.errors import AutotuneError
from autotune.studies.cpu_kernels import expert_schedule, kernel_read_rate, random_stack
from autotune.studies.ram_bandwidth import last_level_cache_bytes, ram_read_bandwidth
from autotune.synth.presets import get_preset

pytest.importorskip("llama_cpp")  # its libraries bring ggml's CPU kernels


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_random_stacks_are_well_formed_blocks(qtype: str) -> None:
    stack = random_stack(3, 8, 512, qtype)
    assert stack.data.shape == (3, 8, row_bytes(qtype, 512))
    values = stack.dequantize()
    assert values.shape == (3, 8, 512) and torch.isfinite(values).all() and values.abs().max() > 0


def test_a_stack_in_huge_pages_holds_the_same_blocks() -> None:
    plain, huge = random_stack(3, 8, 512, "Q4_K"), random_stack(3, 8, 512, "Q4_K", hugepages=True)
    assert torch.equal(plain.data, huge.data) and huge.data.data_ptr() != plain.data.data_ptr()


def test_the_schedule_reads_every_expert_of_every_layer_before_any_again() -> None:
    n_layers, n_expert, k = 3, 16, 4
    steps = list(islice(expert_schedule(n_layers, n_expert, k), 2 * n_layers * n_expert // k))
    assert [layer for layer, _ in steps[:2 * n_layers]] == [0, 1, 2, 0, 1, 2]
    one_pass = steps[: n_layers * n_expert // k]
    for layer in range(n_layers):
        seen = torch.cat([ids for at, ids in one_pass if at == layer])
        assert sorted(seen.tolist()) == list(range(n_expert))  # each once: no reuse within a pass
    assert all(torch.equal(a[1], b[1]) for a, b in zip(one_pass, steps[len(one_pass):]))  # then the same cycle


@pytest.mark.parametrize("repack", [False, True])
def test_the_kernel_rate_cycles_a_weight_set_of_the_asked_size(repack: bool) -> None:
    preset = get_preset("tiny")
    per_expert = 3 * preset.n_ff_expert * row_bytes("Q4_K", preset.n_embd)  # square here: n_ff = n_embd
    asked = 5 * preset.n_expert * per_expert // 2  # two and a half layers' stacks
    rate = kernel_read_rate("tiny", "Q4_K", n_threads=1, repack=repack, weight_bytes=asked, steps=3, hugepages=repack)
    assert rate.hugepages == repack
    assert rate.expert_bytes == per_expert and rate.experts_per_step == preset.n_expert_used
    assert rate.n_layers == 3 and rate.weight_bytes == 3 * preset.n_expert * per_expert >= asked
    assert rate.repack == repack and (rate.repacked != []) == (repack and "AVX2" in cpu_features())
    assert 0 < rate.best_step_seconds <= rate.step_seconds and rate.step_cpu_seconds > 0
    assert rate.bytes_per_second == pytest.approx(preset.n_expert_used * per_expert / rate.step_seconds)


def test_ram_bandwidth_reports_each_reader_and_leaves_torch_threads_as_they_were() -> None:
    threads = torch.get_num_threads()
    rates = ram_read_bandwidth(2, nbytes=2**24, repeats=3)
    assert set(rates) == {"torch_f32_sum", "torch_i64_sum", "numpy_u64_or", "numpy_f32_max"}
    assert all(rate > 1e8 for rate in rates.values())  # any machine reads 100 MB/s
    assert torch.get_num_threads() == threads


def test_the_last_level_cache_is_the_highest_level(tmp_path: Path) -> None:
    for index, (level, size) in enumerate([(1, "48K"), (2, "2048K"), (3, "300M"), (1, "32K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert last_level_cache_bytes(tmp_path) == 300 * 2**20
    with pytest.raises(AutotuneError, match="no CPU cache sizes"):
        last_level_cache_bytes(tmp_path / "missing")

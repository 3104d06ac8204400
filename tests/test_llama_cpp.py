"""The llama_cpp backend on the tiny synthetic model (CPU): trials, placement, space, memory model.

llama_cpp is imported only in child processes here too, as in the tuner.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune.backends.base import Backend, Outcome, Workload
from autotune.backends.llama_cpp.commands import python_snippet
from autotune.backends.llama_cpp.knobs import normalize
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.backends.llama_cpp.vram_model import CUDA_CONTEXT_BYTES, estimate_vram
from autotune.hardware import GpuInfo, HardwareProfile, probe_hardware
from autotune.model_info import LayerBytes, ModelProfile, inspect_model

pytestmark = pytest.mark.skipif(LlamaCppBackend().available() is not None, reason="llama-cpp-python missing")

WORKLOAD = Workload(n_prompt=32, n_gen=8, repetitions=2, n_ctx=256)
ONE_THREAD = {"n_threads": 1, "n_threads_batch": 1}  # robust on a busy 2-core machine
HW = HardwareProfile(cpu_model="test", physical_cores=2, logical_cores=4, ram_bytes=8 * 2**30,
                     gpus=[GpuInfo(0, "test GPU", 24 * 2**30, 24 * 2**30, 4, 16, "8.9", "GPU-test")])
CPU_ONLY = HardwareProfile(cpu_model="test", physical_cores=2, logical_cores=4, ram_bytes=8 * 2**30)


def expert_tensors(*layers: int) -> set[str]:
    return {f"blk.{layer}.ffn_{part}_exps.weight" for layer in layers for part in ("gate", "up", "down")}


def test_every_builtin_backend_implements_the_whole_contract():
    """The registry refuses a backend with an abstract member left (tested in test_trial_lines)."""
    from autotune.backends.registry import BUILTIN, get_backend

    for name in BUILTIN:
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name and not type(backend).__abstractmethods__


def test_an_ok_trial_has_figures_from_llama_cpp_counters(tiny_model: Path):
    result = LlamaCppBackend().run_trial({"n_cpu_moe": 1, **ONE_THREAD}, tiny_model, WORKLOAD, deadline_s=120)
    assert result.outcome is Outcome.OK, result.message
    assert len(result.decode_tps.samples) == len(result.prefill_tps.samples) == 2
    assert result.decode_tps.mean > 0 and result.prefill_tps.mean > 0
    assert 0 < result.load_seconds < result.wall_seconds + result.load_seconds
    assert result.extra["model_buffers_mib"] and result.extra["context_buffers_mib"]
    if probe_hardware().has_gpu:
        assert result.peak_vram_bytes is not None and result.peak_vram_bytes > 0
    else:
        assert result.peak_vram_bytes is None  # no GPU, no figure


def test_llama_cpp_errors_reach_the_trial_log_and_debug_lines_only_while_loading(capsys: pytest.CaptureFixture):
    """ggml's log levels: DEBUG 1, INFO 2, ERROR 4, CONT 5 (a GPU run once lost a cudaMalloc
    failure here, recording a real OOM as a crash)."""
    from autotune.isolation.trial_process import mentions_oom
    from autotune.backends.llama_cpp.trial import LlamaLog

    log = LlamaLog(debug=False)
    log(1, b"a debug line\n", None)
    log(4, b"alloc_buffer: allocating 2048.00 MiB on device 0: ", None)
    log(5, b"cudaMalloc failed: out of memory\n", None)
    log(2, b"llama_context:      CUDA0 compute buffer size =     0.97 MiB\n", None)
    err = capsys.readouterr().err
    assert "debug line" not in err
    assert mentions_oom(err) and "on device 0: cudaMalloc failed" in err
    assert log.buffers_mib == {"compute:CUDA0": 0.97}


def test_expert_placement_reaches_the_loader(tiny_model: Path):
    """llama.cpp's loader logs every tensor an override moved; exactly the placed experts are."""
    backend = LlamaCppBackend()
    configs = [
        {"n_cpu_moe": 1, "cpu_moe_layers": [3], **ONE_THREAD},
        {"n_cpu_moe": 2, **ONE_THREAD},
        {"n_cpu_moe": 1, "cpu_moe_layers": [3], "flash_attn": False, **ONE_THREAD},  # same child as the first
    ]
    results = backend.run_trials(configs, tiny_model, WORKLOAD, deadline_s=120)
    assert [r.outcome for r in results] == [Outcome.OK] * 3, [r.message for r in results]
    assert set(results[0].extra["cpu_overrides"]) == expert_tensors(0, 3)
    assert set(results[1].extra["cpu_overrides"]) == expert_tensors(0, 1)
    assert results[2].extra["cpu_overrides"] == results[0].extra["cpu_overrides"]
    assert all(buft.startswith("CPU") for buft in results[0].extra["cpu_overrides"].values())
    (none,) = backend.run_trials([ONE_THREAD], tiny_model, WORKLOAD, deadline_s=120)
    assert none.extra["cpu_overrides"] == {}


def test_the_override_array_is_what_llama_h_expects():
    """Built in a child: the CPU buffer type is llama.cpp's own, from the one ggml it loaded."""
    code = r"""
import ctypes, re
from autotune.backends.llama_cpp.buft_overrides import BuftOverride, buft_overrides, cpu_buffer_type
import llama_cpp.llama_cpp as api
buft = cpu_buffer_type()
api._lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
assert buft == api._lib.ggml_backend_cpu_buffer_type(), "not llama.cpp's CPU buffer type"
array = buft_overrides([r"blk\.0\.x", r"blk\.(1|2)\.y"], buft)
assert ctypes.sizeof(BuftOverride) == 16 and len(array) == 3
assert [e.pattern for e in array] == [rb"blk\.0\.x", rb"blk\.(1|2)\.y", None]
assert [e.buft for e in array] == [buft, buft, None]
mapped = {line.split()[-1] for line in open("/proc/self/maps") if "/libggml" in line}
families = [re.sub(r"\.so(\.\d+)*$", "", path) for path in mapped]
assert len(families) == len(set(families)), f"a second copy of ggml is loaded: {sorted(mapped)}"
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_the_python_snippet_loads_with_its_placement(tiny_model: Path, tmp_path: Path):
    snippet = python_snippet({"n_cpu_moe": 1, "cpu_moe_layers": [2], "n_ctx": 256, **ONE_THREAD}, tiny_model)
    script = tmp_path / "snippet.py"
    script.write_text(snippet + "print('loaded', llm.n_ctx())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded 256" in done.stdout
    moved = {line.split()[1] for line in done.stderr.splitlines() if "buffer type overridden" in line}
    assert moved == expert_tensors(0, 2)


def test_a_forced_timeout_and_a_failed_load_are_recorded(tiny_model: Path, tmp_path: Path):
    backend = LlamaCppBackend()
    (late,) = backend.run_trials([ONE_THREAD], tiny_model, WORKLOAD, deadline_s=0.01)
    assert late.outcome is Outcome.TIMEOUT and late.message.startswith("setup:")
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"GGUF" + b"\0" * 64)
    broken = backend.run_trial(ONE_THREAD, not_gguf, WORKLOAD, deadline_s=120)
    assert broken.outcome is Outcome.CRASH
    assert broken.message.splitlines()[-1] == "setup: RuntimeError: llama.cpp could not load the model (its log is above)"


def test_suggest_samples_valid_configs_and_replays_enqueued_baselines(tiny_model: Path):
    model, backend = inspect_model(tiny_model), LlamaCppBackend()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for baseline in backend.baselines(model, HW, 2**30, WORKLOAD):
        study.enqueue_trial(baseline)
        assert backend.suggest(study.ask(), model, HW, WORKLOAD) == baseline
    for _ in range(50):
        config = backend.suggest(study.ask(), model, HW, WORKLOAD)
        assert config == normalize(config) and config["n_ctx"] == WORKLOAD.n_ctx


def test_n_cpu_moe_is_not_searched_inside_the_leading_dense_layers(tiny_model: Path):
    """--n-cpu-moe 1 and 2 keep every expert on the GPU when layers 0 and 1 are dense, as 0 does:
    the search starts at 2, which stands for 0."""
    model = inspect_model(tiny_model)
    dense = [LayerBytes(attention=layer.attention, dense_ffn=layer.experts) for layer in model.layers[:2]]
    model = dataclasses.replace(model, layers=dense + model.layers[2:])
    assert model.n_dense_lead == 2
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {LlamaCppBackend().suggest(study.ask(), model, HW, WORKLOAD)["n_cpu_moe"] for _ in range(60)}
    assert seen == {0} | set(range(3, model.n_layers + 1))


def test_baselines_all_on_cpu_largest_split_that_fits_and_defaults(tiny_model: Path):
    model, backend = inspect_model(tiny_model), LlamaCppBackend()
    predicted = [backend.predict_vram({"n_cpu_moe": n}, model, WORKLOAD) for n in range(model.n_layers + 1)]
    cap = (predicted[1] + predicted[2]) // 2  # fits with the experts of 2 layers on the CPU, not 1
    configs = [c for c in backend.baselines(model, HW, cap, WORKLOAD) if c["n_ubatch"] == 512]
    assert [c["n_cpu_moe"] for c in configs] == [model.n_layers, 2, 0]
    assert all(c["n_gpu_layers"] == model.n_layers + 1 and c["n_threads"] == HW.physical_cores for c in configs)


def test_a_smaller_ubatch_that_lets_fewer_layers_experts_fit_is_a_baseline_too():
    """On the H200 machine, --n-cpu-moe 21 -ub 512 took 12.01 GiB holding 4096 tokens and -ub 256
    11.86 GiB (studies/skew0): at a 12 GiB cap only the smaller compute buffer lets it fit."""
    model, backend, workload = qwen3_30b_shape(), LlamaCppBackend(), Workload(n_ctx=4096)
    hw = HardwareProfile(cpu_model="test", physical_cores=16, logical_cores=16, ram_bytes=128 * 2**30, gpus=HW.gpus)
    cap = backend.predict_vram({"n_cpu_moe": 21, "n_ubatch": 256}, model, workload)
    assert backend.predict_vram({"n_cpu_moe": 21, "n_ubatch": 512}, model, workload) > cap
    splits = [(c["n_cpu_moe"], c["n_ubatch"]) for c in backend.baselines(model, hw, cap, workload)]
    assert splits == [(48, 512), (22, 512), (21, 256), (0, 512)]  # 256 is the largest ubatch that fits 21


def test_memory_model_terms(tiny_model: Path):
    model = inspect_model(tiny_model)
    all_gpu = estimate_vram(normalize({"n_ctx": 1000}), model)
    assert all_gpu.cuda_context == CUDA_CONTEXT_BYTES
    assert all_gpu.weights == model.tensor_data_bytes - model.token_embd_bytes  # embeddings stay on the CPU
    assert all_gpu.kv_cache == 1024 * model.kv_bytes_per_token()  # n_ctx padded to 256
    experts_on_cpu = estimate_vram(normalize({"n_ctx": 1000, "n_cpu_moe": model.n_layers}), model)
    assert all_gpu.weights - experts_on_cpu.weights == model.experts_bytes
    assert experts_on_cpu.compute - all_gpu.compute == model.layers[0].experts  # op_offload copies one layer
    half = estimate_vram(normalize({"n_ctx": 1000, "n_gpu_layers": 3}), model)  # output + the last 2 layers
    assert half.weights == model.output_bytes + model.layers[2].total + model.layers[3].total
    assert half.kv_cache == all_gpu.kv_cache // 2
    no_fa = estimate_vram(normalize({"n_ctx": 1000, "flash_attn": False}), model)
    assert no_fa.compute - all_gpu.compute == 1024 * 512 * model.n_head * 4


def qwen3_30b_shape() -> ModelProfile:
    """The qwen3-30b-a3b synthetic preset's byte groups (Q4_K, with Q6_K for attn_v, ffn_down_exps, output)."""
    q4k, q6k = (lambda n: n * 144 // 256), (lambda n: n * 210 // 256)
    embd, ff, experts, q_dim = 2048, 768, 128, 4096
    attention = q4k(embd * q_dim) + q4k(embd * 512) + q6k(embd * 512) + q4k(q_dim * embd) + 4 * (128 + 128 + embd)
    layer = LayerBytes(attention=attention, router=4 * embd * experts,
                       experts=experts * (2 * q4k(embd * ff) + q6k(ff * embd)), other=4 * embd)
    return ModelProfile(
        path="qwen3-30b-a3b.gguf", file_bytes=0, architecture="qwen3moe", name="qwen3-30b-a3b", n_layers=48,
        n_embd=embd, n_head=32, n_head_kv=4, head_dim_k=128, head_dim_v=128, n_vocab=151936, context_length=40960,
        n_expert=experts, n_expert_used=8, n_ff=0, n_ff_expert=ff, token_embd_bytes=q4k(151936 * embd),
        output_bytes=q6k(151936 * embd) + 4 * embd, layers=[layer] * 48, quant_types={}, tensor_data_bytes=0,
        fingerprint="qwen3-30b-a3b",
    )


@pytest.mark.parametrize("n_cpu_moe, measured_gib", [(0, 19.8), (12, 15.3), (18, 13.1), (24, 10.9), (36, 6.4), (48, 1.9)])
def test_memory_model_is_near_the_reference_figures(n_cpu_moe: int, measured_gib: float):
    """Peak VRAM of llama-bench -p 512 -n 128 -fa 1 on the H100 (shared ANCHORS.md), uncalibrated."""
    config = normalize({"n_gpu_layers": 99, "n_cpu_moe": n_cpu_moe, "n_ctx": 640})
    predicted_gib = estimate_vram(config, qwen3_30b_shape()).total / 2**30
    assert predicted_gib == pytest.approx(measured_gib, rel=0.08)


def test_on_a_dense_model_only_layer_offload_is_tuned(dense_model: Path):
    from autotune.model_info import inspect_model

    model, hw = inspect_model(dense_model), HW
    backend = LlamaCppBackend()
    study = optuna.create_study()
    seen = set()
    for _ in range(20):
        config = backend.suggest(study.ask(), model, hw, Workload(objective="decode"))
        assert config["n_cpu_moe"] == 0
        seen.add(config["n_gpu_layers"])
    assert len(seen) > 1 and min(seen) >= 0 and max(seen) <= model.n_layers + 1
    layers = sorted(c["n_gpu_layers"] for c in backend.baselines(model, hw, 2**40, Workload()))
    assert layers[0] == 0 and layers[-1] == model.n_layers + 1  # all on the CPU; everything fits


@pytest.mark.parametrize("objective", ["decode", "prefill"])
def test_without_a_gpu_only_cpu_settings_are_tuned(tiny_model: Path, objective: str):
    """GPU placement changes nothing on a machine without one: every layer stays on the CPU, and
    the baselines are one config instead of several that would run the same way."""
    model, backend, workload = inspect_model(tiny_model), LlamaCppBackend(), Workload(objective=objective)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    searched = set()
    for _ in range(30):
        trial = study.ask()
        config = backend.suggest(trial, model, CPU_ONLY, workload)
        assert (config["n_gpu_layers"], config["n_cpu_moe"], config["op_offload"]) == (0, 0, True)
        searched |= set(trial.params)
    assert not searched & set(backend.gpu_only_knobs) and "n_threads" in searched
    [baseline] = backend.baselines(model, CPU_ONLY, 2**30, workload)
    assert baseline["n_gpu_layers"] == 0 and baseline["n_threads"] == CPU_ONLY.physical_cores

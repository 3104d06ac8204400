"""``autotune inspect`` on each family's parts, its KV bytes against llama.cpp's own cache, and
the one line that says what the cache runtime lacks; the low-bit mixes of ``synth --quant``."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QType
from typer.testing import CliRunner

from autotune.backends.llama_cpp.knobs import normalize
from autotune.backends.llama_cpp.vram_model import estimate_vram, ffn_width
from autotune.cache_runtime.support import runtime_gap
from autotune.cli import app
from autotune.model_info import inspect_model
from autotune.synth import write_synthetic_model
from autotune.synth.presets import LAYOUTS, get_preset
from autotune.synth.writer import FALLBACK_TYPES

N_CTX = 1024
_KV_SIZE = re.compile(r"K \((\w+)\):\s+([\d.]+) MiB, V \((\w+)\):\s+([\d.]+) MiB")


def _llama_cpp_kv_mib(path: Path) -> float:
    """K plus V MiB of llama.cpp's KV cache for N_CTX tokens, as its load reports them."""
    pytest.importorskip("llama_cpp")
    script = f"import sys, llama_cpp\nllama_cpp.Llama(sys.argv[1], n_ctx={N_CTX}, n_threads=1, verbose=True)\n"
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [(_, k_mib, _, v_mib)] = _KV_SIZE.findall(done.stderr)
    return float(k_mib) + float(v_mib)


@pytest.mark.parametrize("fixture", ["deepseek2_model", "glm4moe_model", "qwen2moe_model"])
def test_kv_bytes_per_token_are_llama_cpps(fixture: str, request: pytest.FixtureRequest):
    """A latent KV (MLA) is one K row of kv_lora_rank + rope dims and no V; the others K and V per KV head."""
    path = request.getfixturevalue(fixture)
    profile = inspect_model(path)
    assert profile.kv_bytes_per_token() * N_CTX / 2**20 == pytest.approx(_llama_cpp_kv_mib(path), abs=0.005)


def test_inspect_names_each_family_part(deepseek2_model: Path, qwen2moe_model: Path, glm4moe_model: Path):
    mla = inspect_model(deepseek2_model)
    preset = get_preset("deepseek2-tiny")
    assert (mla.n_shared_experts, mla.n_ff_shexp, mla.n_dense_lead, mla.n_moe_layers) == (2, 512, 1, 3)
    assert (mla.kv_lora_rank, mla.rope_dims, mla.latent_kv) == (preset.kv_lora_rank, preset.rope_dims, True)
    assert mla.shared_experts_bytes == sum(layer.shared_experts for layer in mla.layers[1:]) > 0
    qwen2 = inspect_model(qwen2moe_model)
    assert (qwen2.n_shared_experts, qwen2.n_ff_shexp, qwen2.n_dense_lead, qwen2.latent_kv) == (1, 512, 0, False)

    out = " ".join(CliRunner().invoke(app, ["inspect", str(deepseek2_model)]).output.split())
    assert "shared experts: 2 per MoE layer" in out
    assert "leading dense layers: 1 (FFN 768), then 3 MoE layers" in out
    assert "latent attention (MLA): kv_lora_rank 256 + RoPE 32 dims" in out and "576 B per token and layer" in out
    assert "cache runtime: runs deepseek2 with" in out
    out = " ".join(CliRunner().invoke(app, ["inspect", str(glm4moe_model)]).output.split())
    assert "partial RoPE: 32 of 64 head dims" in out and "shared experts: 1 per MoE layer" in out


def test_what_the_runtime_lacks_is_one_line_naming_every_gap(glm4moe_model: Path, dense_model: Path):
    profile = inspect_model(glm4moe_model)
    assert runtime_gap(profile) is None
    planned = dataclasses.replace(profile, architecture="olmoe", quant_types={**profile.quant_types, "TQ1_0": 1})
    gap = runtime_gap(planned)
    assert gap.startswith("the olmoe family needs q/k norm over the whole projection, not implemented yet; "
                          "the runtime has no kernels for GGML type TQ1_0 (it reads F32,")
    assert runtime_gap(dataclasses.replace(profile, architecture="grok")).startswith(
        "the runtime does not know architecture 'grok'")
    assert runtime_gap(inspect_model(dense_model)) == "a dense model has no routed experts: nothing to cache"
    out = CliRunner().invoke(app, ["inspect", str(dense_model), "--json"]).output
    assert '"runtime_gap": "a dense model has no routed experts: nothing to cache"' in out


def test_the_compute_buffer_and_kv_cache_follow_the_family(deepseek2_model: Path):
    """The widest FFN: the selected experts plus the shared ones, or a wider leading dense layer."""
    model = inspect_model(deepseek2_model)
    assert ffn_width(model) == 4 * 256 + 512
    assert ffn_width(dataclasses.replace(model, n_ff=4096)) == 4096
    estimate = estimate_vram(normalize({"n_ctx": N_CTX}), model)
    assert estimate.kv_cache == N_CTX * model.n_layers * (256 + 32) * 2  # the latent row, f16


@pytest.mark.parametrize("preset, quant", [("deepseek3-tiny", "ud-q2_k_xl"), ("glm4moe-tiny", "iq4_xs-mix"),
                                           ("qwen2moe-tiny", "mxfp4_moe")])
def test_a_mix_gives_each_role_its_type_and_both_engines_take_it(tmp_path: Path, preset: str, quant: str):
    path = tmp_path / "mix.gguf"
    write_synthetic_model(path, preset=preset, quant=quant, routing="static")
    profile = inspect_model(path)
    layout = LAYOUTS[quant]
    for tensor in profile.tensors:
        role = tensor.name.removeprefix("blk.").split(".", 1)[-1].removesuffix(".weight")
        if role in layout and tensor.type != "F32":
            wanted = layout[role]
            assert tensor.type in (wanted.name, FALLBACK_TYPES.get(wanted, QType.Q8_0).name), tensor.name
    assert {t.type for t in profile.tensors if "_exps" in t.name} == {layout["ffn_gate_exps"].name,
                                                                      layout["ffn_down_exps"].name}
    assert runtime_gap(profile) is None
    pytest.importorskip("llama_cpp")
    script = ("import sys, llama_cpp\nllm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=False)\n"
              "print(llm.create_completion('the people', max_tokens=4, temperature=0.0)['usage']['completion_tokens'])\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 4


def test_a_cut_of_a_real_shape_keeps_a_layer_of_routed_experts():
    assert (get_preset("deepseek-v3", 2).n_dense_lead, get_preset("deepseek-v3", 5).n_dense_lead) == (1, 3)
    assert get_preset("glm-4.5-air", 1).n_dense_lead == 0

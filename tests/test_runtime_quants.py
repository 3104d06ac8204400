"""Whole synthetic files in the newer weight types (Q4_0, IQ4_XS, Q2_K and the grid types
IQ3_XXS, IQ3_S, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) through the runtime's Engine, against llama.cpp
itself on the CPU: llama.cpp loads and runs each file the encoders (``quants``, ``quants_iq``)
wrote.

llama.cpp's CPU kernels round the activations to 8 bits (Q8_0 or Q8_K) before each quantized
dot product, so its logits differ from the runtime's float32 ones by about 2e-2 of their
largest value on these files, and a greedy step may pick the other of two near-equal logits.
So the runtime decodes teacher-forced on llama.cpp's tokens, and each step must agree: logits
within 5e-2 of the largest, and the runtime's pick at most 1e-2 below llama.cpp's best logit.
Measured with the right decoding: at most 2.4e-2 and 3.3e-3; with IQ4_XS's nibbles in the
wrong order: 1.4e-1 and 1.0e-1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.cache_runtime.engine import Engine
from autotune.model_info import inspect_model
from autotune.synth import write_synthetic_model
from tests.llama_cpp_reference import STEPS, llama_cpp_greedy, runtime_logits

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=[("q4_0", "Q4_0"), ("iq4_xs", "IQ4_XS"), ("q2_k", "Q2_K"),
                                        ("iq3_xxs", "IQ3_XXS"), ("iq3_s", "IQ3_S"), ("iq2_xs", "IQ2_XS"),
                                        ("iq2_s", "IQ2_S"), ("iq1_s", "IQ1_S"), ("iq1_m", "IQ1_M")],
                ids=lambda p: p[0])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    quant, qtype = request.param
    path = tmp_path_factory.mktemp("quants") / f"tiny-{quant}.gguf"
    write_synthetic_model(path, preset="tiny", quant=quant, seed=0)
    return path, qtype


def test_every_weight_is_of_the_chosen_type(model: tuple[Path, str]) -> None:
    path, qtype = model
    assert inspect_model(path).quant_types.keys() == {qtype, "F32"}  # F32: the norms and the router


def test_runtime_follows_llama_cpp(model: tuple[Path, str]) -> None:
    path, _ = model
    want_tokens, want_logits = llama_cpp_greedy(path)
    got = runtime_logits(Engine(path, device="cpu", kernels="torch", max_ctx=64), want_tokens)
    for step in range(STEPS):
        want = want_logits[step]
        largest = float(want.abs().max())
        err = float((got[step] - want).abs().max()) / largest
        assert err < 5e-2, f"step {step}: logits off by {err:.2e} of their largest"
        gap = float(want.max() - want[got[step].argmax()]) / largest
        assert gap < 1e-2, f"step {step}: the runtime's pick is {gap:.2e} below llama.cpp's best"

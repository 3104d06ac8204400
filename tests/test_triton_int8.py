"""The 8-bit input path of the decode kernels (``triton_int8``): the input's rounding as
llama.cpp's ``quantize_q8_1`` and ``dp4a``'s arithmetic, then the experts (Q4_K gate and up, Q6_K
down) on it against float64 over the same rounded inputs.

As in test_runtime_triton: without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1,
set here before any kernel module is imported), where ``dp4a`` takes its byte-by-byte path;
on the GPU machine the same tests run compiled, ``dp4a`` as PTX.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from autotune.cache_runtime import triton_int8, triton_ops, triton_tile_parts  # noqa: E402
from autotune.cache_runtime.torch_ops import glu  # noqa: E402
from tests.test_runtime_triton import _moe_reference, _qtensor, _rel, _routed_moe  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """llama.cpp's quantize_q8_1 in float32: codes, scale and scaled code sum per block of 32."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    v = blocks / np.where(d > 0, d, np.float32(1))[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int32)
    return q, d, (d * q.sum(axis=1)).astype(np.float32)


@triton.jit
def _quantize_kernel(x_ptr, xq_ptr, xd_ptr, xs_ptr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    offs = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + offs, mask=offs < K, other=0.0)
    triton_int8.quantize_store(x, xq_ptr, xd_ptr, xs_ptr, K, BLOCK_K)


@triton.jit
def _dp4a_kernel(a_ptr, b_ptr, c_ptr, out_ptr, N: tl.constexpr, SIGNED: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, triton_tile_parts.dp4a(tl.load(a_ptr + offs), tl.load(b_ptr + offs), tl.load(c_ptr + offs),
                                              SIGNED))


@pytest.mark.parametrize("k", [256, 768])  # 768: the block count is not a power of 2
def test_the_input_is_rounded_as_llama_cpp_rounds_it(k: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(k).astype(np.float32) * 3
    x[32:64] = 0  # a block of zeros: scale 0, codes 0
    xq = torch.zeros(k // 4, dtype=torch.int32, device=DEVICE)
    xd = torch.zeros(k // 32, device=DEVICE)
    xs = torch.zeros(k // 32, device=DEVICE)
    _quantize_kernel[(1,)](torch.from_numpy(x).to(DEVICE), xq, xd, xs, K=k, BLOCK_K=triton.next_power_of_2(k))
    q, d, s = q8_1(x)
    codes = xq.cpu().numpy().view(np.int8).astype(np.int32).reshape(-1, 32)
    assert np.array_equal(codes, q)
    assert np.array_equal(xd.cpu().numpy(), d)
    assert np.allclose(xs.cpu().numpy(), s, rtol=1e-6, atol=0)
    assert np.abs(q).max() == 127 and not q[1].any()


@pytest.mark.parametrize("signed", [False, True])
def test_dp4a_multiplies_bytes_by_signed_ones_and_adds(signed: bool) -> None:
    rng = np.random.default_rng(1)
    n = 1024
    a = rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
    b = rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
    c = rng.integers(-2**20, 2**20, n).astype(np.int32)
    out = torch.zeros(n, dtype=torch.int32, device=DEVICE)
    _dp4a_kernel[(1,)](*(torch.from_numpy(v).to(DEVICE) for v in (a, b, c)), out, N=n, SIGNED=signed)
    want = c.astype(np.int64) + (a.view(np.int8 if signed else np.uint8).reshape(n, 4).astype(np.int64)
                                 * b.view(np.int8).reshape(n, 4).astype(np.int64)).sum(axis=1)
    assert np.array_equal(out.cpu().numpy().astype(np.int64), want)


def _rounded(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) through llama.cpp's 8-bit blocks and back, in float64 on the CPU."""
    q, d, _ = q8_1(x.detach().cpu().float().numpy().reshape(-1))
    return torch.from_numpy(q * d[:, None].astype(np.float64)).reshape(x.shape)


def _experts_on_rounded_inputs(ops, h, x, weights, ids) -> torch.Tensor:
    """``_moe_reference`` with each expert's input rounded as the 8-bit path rounds it: xn for
    gate and up, the gated activation for down."""
    layer = ops.w.layers[0]
    gate, up, down = (w.to("cpu") for w in (layer.gate_exps, layer.up_exps, layer.down_exps))
    xr = _rounded(x[0])
    out = h[0].double().cpu().clone()
    for wt, e in zip(weights[0].tolist(), ids[0].tolist()):
        act = glu(gate[e].dequantize().double() @ xr, up[e].dequantize().double() @ xr, "silu")
        out += wt * (down[e].dequantize().double() @ _rounded(act))
    return out


def test_experts_on_the_8_bit_inputs_match_float64_on_the_same_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Q4_K gate and up on the router's 8-bit xn, Q6_K down on the rounded activation: exact but
    for float32 rounding against float64 over the same rounded inputs, and within the
    rounding's own effect of the float path (random synthetic blocks)."""
    monkeypatch.setattr(triton_ops, "ROUTER_WARPS", 2)
    torch.manual_seed(0)  # the token h
    ops, h, x, weights, ids = _routed_moe(np.random.default_rng(2), ragged=False)
    ops.int8_inputs = True
    assert (ops.w.layers[0].gate_exps.qtype, ops.w.layers[0].down_exps.qtype) == ("Q4_K", "Q6_K")
    got, got_ids = ops.moe(h.clone(), 0)
    assert sorted(got_ids[0].tolist()) == sorted(ids[0].tolist())
    assert _rel(got[0].cpu(), _experts_on_rounded_inputs(ops, h, x, weights, ids)) < 1e-5
    assert _rel(got[0].cpu(), _moe_reference(ops, h, x, weights, ids)) < 5e-2


@pytest.mark.parametrize("gate_up, down, n_ff, n_embd", [
    ("Q8_0", "Q5_0", 416, 288),  # rows of 9 and 13 blocks of 32: no whole super-block
    ("MXFP4", "Q4_1", 448, 320),  # MXFP4: an even count of 17-byte blocks a row
    ("IQ4_NL", "Q5_1", 448, 320),
    ("Q4_0", "MXFP4", 448, 320),
    ("IQ4_XS", "Q8_0", 256, 512),
])
def test_the_32_element_block_types_on_the_8_bit_inputs_match_float64(
        monkeypatch: pytest.MonkeyPatch, gate_up: str, down: str, n_ff: int, n_embd: int) -> None:
    """Each type of ``triton_int8_blocks32`` as the experts' gate and up, or down, on the 8-bit
    inputs: exact but for float32 rounding against float64 over the same rounded inputs."""
    monkeypatch.setattr(triton_ops, "ROUTER_WARPS", 2)
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    experts = (_qtensor(gate_up, n_ff, n_embd, rng, experts=8), _qtensor(gate_up, n_ff, n_embd, rng, experts=8),
               _qtensor(down, n_embd, n_ff, rng, experts=8))
    ops, h, x, weights, ids = _routed_moe(rng, ragged=False, experts=experts)
    ops.int8_inputs = True
    got, got_ids = ops.moe(h.clone(), 0)
    assert sorted(got_ids[0].tolist()) == sorted(ids[0].tolist())
    assert _rel(got[0].cpu(), _experts_on_rounded_inputs(ops, h, x, weights, ids)) < 1e-5
    assert _rel(got[0].cpu(), _moe_reference(ops, h, x, weights, ids)) < 5e-2


@pytest.mark.slow
def test_the_tiny_model_on_the_8_bit_input_stays_as_close_to_llama_cpp(tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole tiny model (Q4_K gate and up) teacher-forced on llama.cpp's greedy tokens for a
    few decode steps: the 8-bit input moves the logits by about what llama.cpp's own 8-bit
    inputs do, and the runtime's pick stays llama.cpp's."""
    from autotune.cache_runtime.engine import Engine
    from tests.llama_cpp_reference import PROMPT, llama_cpp_greedy, worst_logit_error

    pytest.importorskip("llama_cpp")
    if DEVICE == "cpu":  # the interpreter pays per program: large tiles, few programs
        for name, value in dict(GEMV_WARPS=32, ROUTER_WARPS=32, GATE_UP_WARPS=64, DOWN_ROWS=16, ATTN_SPLITS=4).items():
            monkeypatch.setattr(triton_ops, name, value)
    tokens, want = llama_cpp_greedy(tiny_model)
    steps = 4
    errors = {}
    for int8 in (False, True):
        engine = Engine(tiny_model, device=DEVICE, kernels="triton", max_ctx=64)
        engine.ops.int8_inputs = int8
        got = [engine.prefill(PROMPT)] + [engine.decode(token).clone() for token in tokens[:steps - 1]]
        got = torch.stack(got).double().cpu()
        assert got.argmax(-1).tolist() == tokens[:steps]
        errors[int8] = worst_logit_error(got, want[:steps])
    assert errors[True] < 2 * errors[False], errors

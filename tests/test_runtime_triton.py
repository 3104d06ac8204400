"""The runtime's Triton kernels against plain torch, kernel by kernel.

On a machine without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, set
here before any kernel module is imported); on the GPU machine the same tests run
compiled. Skipped where Triton is not installed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from autotune.cache_runtime import triton_ops  # noqa: E402
from autotune.cache_runtime.dequant import BLOCK_SIZES  # noqa: E402
from autotune.cache_runtime.ops import FullResidency  # noqa: E402
from autotune.cache_runtime.random_blocks import random_blocks  # noqa: E402
from autotune.cache_runtime.routing import route  # noqa: E402
from autotune.cache_runtime.torch_ops import expert_bias, glu, rmsnorm, with_bias  # noqa: E402
from autotune.cache_runtime.triton_gemm import moe_blocks  # noqa: E402
from autotune.cache_runtime.weights import QTensor  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QTYPES = sorted(BLOCK_SIZES)


@pytest.fixture(autouse=True)
def interpreter_friendly(monkeypatch: pytest.MonkeyPatch):
    """On the CPU: one torch thread, and large tiles (the interpreter pays per program)."""
    if DEVICE == "cpu":
        for name, value in dict(GEMV_WARPS=32, ROUTER_WARPS=32, GATE_UP_WARPS=64, DOWN_ROWS=16, ATTN_SPLITS=4).items():
            monkeypatch.setattr(triton_ops, name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qtensor(qtype: str, rows: int, cols: int, rng: np.random.Generator, experts: int = 0) -> QTensor:
    raw = torch.from_numpy(random_blocks(qtype, max(experts, 1) * rows, cols, rng))
    if experts:
        raw = raw.view(experts, rows, -1)
    return QTensor(raw.to(DEVICE), qtype, cols)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


class _Stub(triton_ops.TritonOps):
    """TritonOps' launch helpers without a model around them."""

    def __init__(self, eps: float = 1e-6):
        self.cfg = type("Cfg", (), {"rms_eps": eps})()
        self._dense_tables = {}
        self._done = torch.zeros(1, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("qtype", QTYPES)
def test_gemv_with_norm_residual_and_stacked_weights(qtype: str) -> None:
    rng = np.random.default_rng(0)
    w0, w1 = _qtensor(qtype, 12, 768, rng), _qtensor(qtype, 7, 768, rng)
    x, norm, resid = (torch.randn(n, device=DEVICE) for n in (768, 768, 19))
    got = _Stub()._gemv(x, [w0, w1], norm=norm, resid=resid)
    w = torch.cat([w0.dequantize(), w1.dequantize()])
    want = w.double() @ rmsnorm(x, norm, 1e-6).double() + resid.double()
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_K", "F32", "Q3_K", "IQ4_XS", "MXFP4", "IQ2_XXS",
                                   "IQ3_S", "IQ1_M"])
@pytest.mark.parametrize("tokens", [37, 70])  # the grouped GEMM; dequantize + matmul
def test_dense_prefill_matmul_matches_dequant_matmul(qtype: str, tokens: int) -> None:
    rng = np.random.default_rng(1)
    w = _qtensor(qtype, 40, 512, rng)
    x = torch.randn(tokens, 512, device=DEVICE)
    got = _Stub().linear(x, w)
    assert _rel(got, x.double() @ w.dequantize().double().T) < 2e-3  # float16 operands


# Rows of partial super-blocks: gpt-oss's 2880 (its Q8_0 and Q5_0 fallbacks, MXFP4 experts, F32
# router) and DeepSeek-V2-Lite's 1408 (its down experts' 32-element fallback).
RAGGED = [("Q8_0", 2880), ("Q5_0", 2880), ("MXFP4", 2880), ("Q8_0", 1408), ("F32", 2880)]


@pytest.mark.parametrize("qtype, cols", RAGGED)
def test_gemv_on_rows_of_partial_superblocks(qtype: str, cols: int) -> None:
    rng = np.random.default_rng(6)
    w0, w1 = _qtensor(qtype, 12, cols, rng), _qtensor(qtype, 7, cols, rng)
    x, norm, resid = (torch.randn(n, device=DEVICE) for n in (cols, cols, 19))
    got = _Stub()._gemv(x, [w0, w1], norm=norm, resid=resid)
    w = torch.cat([w0.dequantize(), w1.dequantize()])
    want = w.double() @ rmsnorm(x, norm, 1e-6).double() + resid.double()
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("qtype, cols", RAGGED[:4])
@pytest.mark.parametrize("tokens", [37, 70])  # the grouped GEMM; dequantize + matmul
def test_prefill_on_rows_of_partial_superblocks(qtype: str, cols: int, tokens: int) -> None:
    rng = np.random.default_rng(7)
    w = _qtensor(qtype, 40, cols, rng)
    x = torch.randn(tokens, cols, device=DEVICE)
    got = _Stub().linear(x, w)
    assert _rel(got, x.double() @ w.dequantize().double().T) < 2e-3  # float16 operands


@pytest.mark.parametrize("qtype, cols", RAGGED[:4])
def test_dequant_kernel_on_rows_of_partial_superblocks(qtype: str, cols: int) -> None:
    w = _qtensor(qtype, 40, cols, np.random.default_rng(8))
    assert torch.equal(_Stub()._dequant_f16(w), w.dequantize().half())


@pytest.mark.parametrize("qtype, cols, message", [("Q8_0", 160, "at least 256"), ("F32", 272, "32-element"),
                                                  ("MXFP4", 288, "even number of bytes")])
def test_kernels_refuse_rows_they_cannot_read(qtype: str, cols: int, message: str) -> None:
    """Shorter than a super-block; floats of no whole 32; MXFP4 of 9 blocks (153 bytes)."""
    w = _qtensor(qtype, 4, cols, np.random.default_rng(9))
    with pytest.raises(ValueError, match=message):
        _Stub()._gemv(torch.randn(cols, device=DEVICE), [w])


def test_moe_blocks_cover_every_pair_once() -> None:
    ids = torch.tensor([[3, 1], [1, 0], [3, 2], [1, 3]], device=DEVICE)
    rows, groups = moe_blocks(ids, n_expert=5, bm=2)
    rows, groups = rows.view(-1, 2).cpu(), groups.cpu()
    flat = ids.reshape(-1).cpu()
    seen = rows[rows >= 0]
    assert sorted(seen.tolist()) == list(range(8))
    for block, group in zip(rows, groups):
        members = block[block >= 0]
        if group < 0:
            assert len(members) == 0
        else:
            assert (flat[members.long()] == group).all()


Biases = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
NO_BIASES: Biases = (None, None, None)


class _MoeStub(_Stub):
    """One MoE layer; ``biases``: its experts' gate, up and down biases."""

    def __init__(self, gate: QTensor, up: QTensor, down: QTensor, top_k: int, act: str = "silu",
                 biases: Biases = NO_BIASES):
        super().__init__()
        n_expert, n_ff, n_embd = gate.data.shape[0], gate.rows, down.rows
        self.cfg = type("Cfg", (), dict(rms_eps=1e-6, n_expert=n_expert, n_expert_used=top_k,
                                        n_ff_expert=n_ff, n_embd=n_embd, norm_topk=True, gating="softmax",
                                        expert_weights_scale=0.0, moe_layer=lambda self, il: il,
                                        expert_act=act, n_dense_lead=0, n_expert_groups=0))()
        gate_b, up_b, down_b = biases
        layer = type("Layer", (), dict(gate_exps=gate, up_exps=up, down_exps=down, exp_probs_b=None,
                                       gate_shexp=None, router_b=None, plain_experts=all(b is None for b in biases),
                                       gate_exps_b=gate_b, up_exps_b=up_b, down_exps_b=down_b))()
        self.w = type("W", (), dict(layers=[layer], moe_layers=[layer]))()
        self.experts_table = triton_ops.ExpertTable([layer], torch.device(DEVICE))


def _expert_reference(x, weights, ids, gate, up, down, act: str = "silu", biases: Biases = NO_BIASES):
    """In float64 on the CPU, expert by expert (``TorchOps.expert_ffn``)."""
    gate_b, up_b, down_b = (None if b is None else b.cpu().double() for b in biases)
    out = torch.zeros(x.shape[0], down.rows, dtype=torch.float64)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist()):
            g = with_bias(gate[e].dequantize().double() @ x[t].double(), expert_bias(gate_b, e))
            u = with_bias(up[e].dequantize().double() @ x[t].double(), expert_bias(up_b, e))
            out[t] += w * with_bias(down[e].dequantize().double() @ glu(g, u, act), expert_bias(down_b, e))
    return out


def _moe_weights(rng, ragged: bool = False):
    """8 experts of 256 x 512 in K-quants, or (ragged) of 416 x 288 in 32-element block types:
    widths of 13 and 9 blocks of 32, no whole super-blocks (as gpt-oss's 2880)."""
    if ragged:
        return (_qtensor("Q8_0", 416, 288, rng, experts=8), _qtensor("Q8_0", 416, 288, rng, experts=8),
                _qtensor("Q5_0", 288, 416, rng, experts=8))
    gate = _qtensor("Q4_K", 256, 512, rng, experts=8)
    up = _qtensor("Q4_K", 256, 512, rng, experts=8)
    down = _qtensor("Q6_K", 512, 256, rng, experts=8)
    return gate, up, down


def _routed_moe(rng: np.random.Generator, ragged: bool, act: str = "silu", biased: bool = False,
                experts: tuple[QTensor, QTensor, QTensor] | None = None):
    """A top-3 MoE layer with its F32 router, a token h, its normalized x, and torch's routing of
    it: (ops, h, x, weights, ids); ``biased``: with each expert's gate, up and down biases;
    ``experts``: its gate, up and down weights (else ``_moe_weights``')."""
    gate, up, down = experts or _moe_weights(rng, ragged)
    n_embd = gate.cols
    router = _qtensor("F32", 8, n_embd, rng)
    biases = NO_BIASES
    if biased:
        biases = tuple(torch.from_numpy(rng.standard_normal((8, n), dtype=np.float32) * 4).to(DEVICE)
                       for n in (gate.rows, gate.rows, n_embd))
    ops = _MoeStub(gate, up, down, 3, act, biases)
    ffn_norm = torch.rand(n_embd, device=DEVICE) + 0.5
    layer = ops.w.layers[0]
    layer.router, layer.ffn_norm = router, ffn_norm
    h = torch.randn(1, n_embd, device=DEVICE)
    x = rmsnorm(h, ffn_norm, 1e-6)
    weights, ids = route(x @ router.dequantize().T, 3, True)
    return ops, h, x, weights, ids


def _moe_reference(ops: _MoeStub, h, x, weights, ids) -> torch.Tensor:
    """h + the layer's experts (``_expert_reference``), on the CPU in float64."""
    layer = ops.w.layers[0]
    gate, up, down = (w.to("cpu") for w in (layer.gate_exps, layer.up_exps, layer.down_exps))
    biases = (layer.gate_exps_b, layer.up_exps_b, layer.down_exps_b)
    return h[0].double().cpu() + _expert_reference(x.cpu(), weights.cpu(), ids.cpu(), gate, up, down,
                                                   ops.cfg.expert_act, biases)[0]


@pytest.mark.slow
@pytest.mark.parametrize("shapes, ragged", [((None, None), False), ((1, 2), False), ((None, None), True)])
def test_moe_decode_kernels_route_and_sum_like_torch(monkeypatch: pytest.MonkeyPatch, shapes, ragged: bool) -> None:
    """shapes: a cache config's launch shapes; ragged: rows of partial super-blocks."""
    monkeypatch.setattr(triton_ops, "ROUTER_WARPS", 2)  # 4 router programs: the last one routes
    ops, h, x, weights, ids = _routed_moe(np.random.default_rng(2), ragged)
    ops.chunk_rounds, ops.gate_up_warps = shapes
    want = _moe_reference(ops, h, x, weights, ids)
    for _ in range(2):  # the second call finds the done-counter reset by the first
        got, got_ids = ops.moe(h.clone(), 0)
        assert sorted(got_ids[0].tolist()) == sorted(ids[0].tolist())
        assert _rel(got[0].cpu(), want) < 1e-5


class _OffloadSlots(FullResidency):
    """Hands the selections ``on`` leaves off to a CPU that adds nothing."""

    def __init__(self, on: torch.Tensor):
        self.on = on

    def offload(self, layer, x, ids, weights):
        return self.on

    def add_offloaded(self, layer, h):
        pass


@pytest.mark.parametrize("ragged, skip", [(False, False), (True, False), (False, True)])
def test_moe_decode_kernels_take_biases_and_the_clamped_swiglu(ragged: bool, skip: bool) -> None:
    """gpt-oss's experts on the single-token kernels: each expert's gate, up and down biases and
    the clamped SwiGLU. ``skip``: the slot handed to the CPU adds nothing, its down bias neither.
    Measured (K-quants, ragged): 2e-6, 2e-7; 66, 5.1 with plain SwiGLU; 66, 5.2 without the
    clamp; 4e-4, 0.076 without the down bias."""
    ops, h, x, weights, ids = _routed_moe(np.random.default_rng(2), ragged, "swiglu_oai", biased=True)
    on = torch.tensor([[True, False, True]], device=DEVICE)
    if skip:
        ops.hooks = _OffloadSlots(on)
        weights = weights * on
    want = _moe_reference(ops, h, x, weights, ids)
    got, got_ids = ops.moe(h.clone(), 0)
    assert sorted(got_ids[0].tolist()) == sorted(ids[0].tolist())
    assert _rel(got[0].cpu(), want) < 1e-5


@pytest.mark.parametrize("norm_topk", [True, False])
def test_router_ranks_ties_by_lowest_id(norm_topk: bool) -> None:
    """128 experts with repeated router rows (equal logits): the top 8 in rank order, a tie
    going to the lower id, as a stable sort of the logits gives them."""
    rng = np.random.default_rng(5)
    rows = _qtensor("F32", 40, 256, rng).dequantize()
    router_rows = rows[torch.from_numpy(rng.integers(0, 40, 128))]  # every row about 3 times
    router = QTensor(router_rows.contiguous().view(torch.uint8).reshape(128, -1), "F32", 256)
    ffn_norm = torch.rand(256, device=DEVICE) + 0.5
    ops = _Stub()
    ops.cfg = type("Cfg", (), dict(rms_eps=1e-6, n_expert=128, n_expert_used=8, n_embd=256,
                                   norm_topk=norm_topk, gating="softmax", expert_weights_scale=0.0,
                                   n_expert_groups=0))()
    layer = type("Layer", (), dict(router=router, ffn_norm=ffn_norm, exp_probs_b=None, router_b=None))()
    ops.w = type("W", (), dict(layers=[layer], moe_layers=[layer]))()
    h = torch.randn(256, device=DEVICE)
    logits, xn = torch.empty(128, device=DEVICE), torch.empty(256, device=DEVICE)
    ids, weights = torch.empty(8, dtype=torch.int32, device=DEVICE), torch.empty(8, device=DEVICE)
    ops.route(h, 0, logits, xn, ops._done, ids, weights)
    want_ids = np.argsort(-logits.cpu().numpy(), kind="stable")[:8]
    assert len(set(logits.cpu().numpy()[want_ids].tolist())) < 8  # the top 8 hold a tie
    assert ids.cpu().tolist() == want_ids.tolist()
    probs = logits.double().softmax(0).cpu()
    want_weights = probs[want_ids] / (probs[want_ids].sum() if norm_topk else 1.0)
    assert _rel(weights.cpu(), want_weights) < 1e-5
    assert _rel(xn.cpu(), rmsnorm(h[None], ffn_norm, 1e-6)[0].cpu()) < 1e-6


@pytest.mark.parametrize("gating, router_bias, selection_bias, scale, norm_topk", [
    ("softmax_weight", True, False, 0.0, False),  # gpt-oss
    ("sigmoid", False, True, 2.5, True),  # GLM-4.5, DeepSeek-V3 (less its expert groups)
    ("sigmoid", False, False, 0.0, False),
    ("softmax", True, True, 16.0, True),
])
def test_router_kernel_routes_as_route_layer(gating: str, router_bias: bool, selection_bias: bool, scale: float,
                                             norm_topk: bool) -> None:
    """The router kernel's gates, router bias (added to the stored logits), selection bias and
    scale against ``routing.route`` in float64, on 60 experts (not a power of 2), top 6."""
    from autotune.cache_runtime.routing import route

    rng = np.random.default_rng(6)
    router = _qtensor("F32", 60, 256, rng)
    vector = lambda: torch.from_numpy(rng.standard_normal(60, dtype=np.float32)).to(DEVICE)  # noqa: E731
    ops = _Stub()
    ops.cfg = type("Cfg", (), dict(rms_eps=1e-6, n_expert=60, n_expert_used=6, n_embd=256, norm_topk=norm_topk,
                                   gating=gating, expert_weights_scale=scale, n_expert_groups=0))()
    # a small norm weight keeps the logits near 1, where float32's sigmoid does not tie experts
    layer = type("Layer", (), dict(router=router, ffn_norm=(torch.rand(256, device=DEVICE) + 0.5) * 0.05,
                                   router_b=vector() if router_bias else None,
                                   exp_probs_b=vector() * 0.5 if selection_bias else None))()
    ops.w = type("W", (), dict(layers=[layer], moe_layers=[layer]))()
    h = torch.randn(256, device=DEVICE)
    logits, xn = torch.empty(60, device=DEVICE), torch.empty(256, device=DEVICE)
    ids, weights = torch.empty(6, dtype=torch.int32, device=DEVICE), torch.empty(6, device=DEVICE)
    ops.route(h, 0, logits, xn, ops._done, ids, weights)
    want_logits = (xn.double().cpu() @ router.dequantize().double().cpu().T
                   + (layer.router_b.double().cpu() if router_bias else 0))
    assert _rel(logits.cpu(), want_logits) < 1e-5
    select = layer.exp_probs_b.double().cpu() if selection_bias else None
    want_weights, want_ids = route(want_logits[None], 6, norm_topk, gating, select, scale)
    assert ids.cpu().tolist() == want_ids[0].tolist()
    assert _rel(weights.cpu(), want_weights[0]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("ragged", [False, True])
def test_qgemm_experts_match_torch(ragged: bool) -> None:
    rng = np.random.default_rng(3)
    gate, up, down = _moe_weights(rng, ragged)
    ops = _MoeStub(gate, up, down, top_k=2)
    # drawn from rng (the same on every device) and small enough that the float16 operands
    # cannot overflow on these random weights (torch.randn on the GPU overflowed one row)
    x = torch.from_numpy(rng.standard_normal((9, gate.cols), dtype=np.float32) * 0.1).to(DEVICE)
    ids = torch.from_numpy(rng.integers(0, 8, (9, 2))).to(DEVICE)
    ids[:, 1] = (ids[:, 0] + 1 + ids[:, 1] % 7) % 8  # two different experts per token
    weights = torch.from_numpy(rng.random((9, 2), dtype=np.float32)).to(DEVICE)
    got = ops.experts(x, weights, ids, 0)
    want = _expert_reference(x.cpu(), weights.cpu(), ids.cpu(), gate.to("cpu"), up.to("cpu"), down.to("cpu"))
    assert _rel(got.cpu(), want) < 3e-3  # float16 operands


@pytest.mark.parametrize("neox, rope_dims, window, sinks", [(True, 0, 0, False), (False, 0, 0, False),
                                                         (True, 16, 0, False), (False, 16, 0, False),
                                                         (True, 0, 20, False), (True, 0, 0, True), (True, 0, 20, True)])
def test_decode_attention_matches_torch(neox: bool, rope_dims: int, window: int, sinks: bool) -> None:
    """RoPE styles and partial RoPE; gpt-oss's sliding window (of 20 of the 71 positions) and sinks."""
    from autotune.cache_runtime.hparams import ModelConfig
    from autotune.cache_runtime.kv_cache import KVCache
    from autotune.cache_runtime.rope import RopeTable
    from autotune.cache_runtime.torch_ops import TorchOps

    cfg = ModelConfig(arch="qwen3moe", n_layers=1, n_embd=64, n_head=4, n_head_kv=2, head_dim=32,
                      n_vocab=0, n_expert=0, n_expert_used=0, n_ff_expert=0, context_length=128,
                      rms_eps=1e-6, rope_base=10000.0, rope_neox=neox, norm_topk=True, qk_norm=True,
                      rope_dims=rope_dims, n_swa=window, swa_layers=(True,))
    layer = type("Layer", (), dict(q_norm=torch.rand(32, device=DEVICE) + 0.5,
                                   k_norm=torch.rand(32, device=DEVICE) + 0.5,
                                   attn_sinks=torch.randn(4, device=DEVICE) * 2 if sinks else None))()
    weights = type("W", (), dict(config=cfg, layers=[layer]))()
    results = []
    for ops_class in (TorchOps, _AttentionOps):
        torch.manual_seed(4)
        cache = KVCache(cfg, 96, torch.device(DEVICE), torch.float16)
        rope = RopeTable(cfg, 96, torch.device(DEVICE))
        ops = ops_class(weights, cache, rope)
        history = 70
        k = torch.randn(history, 2, 32, device=DEVICE)
        v = torch.randn(history, 2, 32, device=DEVICE)
        cache.store(0, 0, rope.apply(k, 0), v)
        cache.pos.fill_(history)
        q, k1, v1 = (torch.randn(1, n, device=DEVICE) for n in (128, 64, 64))
        rotated = ops.rope_store(q, k1, v1, 0, history)
        results.append((rotated, ops.attend(rotated, 0, history), cache.k.clone(), cache.v.clone()))
    for want, got in zip(results[0], results[1]):
        assert _rel(got.float(), want.float()) < 2e-3


class _AttentionOps(triton_ops.TritonOps):
    def __init__(self, weights, cache, rope):
        triton_ops.TorchOps.__init__(self, weights, cache, rope)


@pytest.fixture(scope="module")
def iq4_xs_model(tmp_path_factory: pytest.TempPathFactory):
    """The tiny preset with every weight in IQ4_XS (a code book type, its own scale layout)."""
    from autotune.synth import write_synthetic_model

    path = tmp_path_factory.mktemp("models") / "tiny-iq4_xs.gguf"
    write_synthetic_model(path, preset="tiny", quant="iq4_xs", seed=0)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_model", "iq4_xs_model"])
def test_engine_on_triton_kernels_matches_reference(model: str, request: pytest.FixtureRequest) -> None:
    """Prefill (grouped GEMM) and single-token (fused GEMV) kernels over the whole tiny model."""
    from autotune.cache_runtime.engine import Engine
    from autotune.cache_runtime.reference import reference_logits

    tiny_model = request.getfixturevalue(model)
    prompt = [5, 17, 300, 42, 7, 999]
    ref_logits, ref_ids = reference_logits(tiny_model, prompt)
    engine = Engine(tiny_model, device=DEVICE, kernels="triton", max_ctx=64, use_graph=False)
    engine.trace.enabled = True
    first = engine.prefill(prompt[:4])
    engine.prefill_chunk = 1  # chunks of one token: the decode kernels, at positions 4 and 5
    second = engine.prefill(prompt[4:])
    assert _rel(first.cpu(), ref_logits[3]) < 3e-3
    assert _rel(second.cpu(), ref_logits[5]) < 3e-3
    np.testing.assert_array_equal(np.sort(engine.trace.ids(), -1), np.sort(ref_ids.numpy(), -1))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen2moe_model", "glm4moe_model", "deepseek3_model"])
def test_families_on_triton_kernels_match_the_torch_path(model: str, request: pytest.FixtureRequest) -> None:
    """Attention biases, partial RoPE, a sigmoid router with selection bias and scale, shared
    experts and a leading dense layer, on the prefill and the single-token kernels; latent
    attention (torch around the Triton projections) with expert groups."""
    from autotune.cache_runtime.engine import Engine

    path = request.getfixturevalue(model)
    prompt = [5, 17, 300, 42, 7, 999]
    logits = []
    for kernels in ("torch", "triton"):
        engine = Engine(path, device=DEVICE, kernels=kernels, max_ctx=64, use_graph=False)
        engine.trace.enabled = True
        engine.prefill(prompt[:4])
        engine.prefill_chunk = 1  # chunks of one token: the decode kernels, at positions 4 and 5
        logits.append((engine.prefill(prompt[4:]).cpu(), engine.trace.ids()))
    (want, want_ids), (got, got_ids) = logits
    assert _rel(got, want) < 3e-3
    np.testing.assert_array_equal(np.sort(got_ids, -1), np.sort(want_ids, -1))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt_oss_model", "gpt_oss_mxfp4_model"])
def test_gpt_oss_on_triton_kernels_matches_the_torch_path(model: str, request: pytest.FixtureRequest) -> None:
    """gpt-oss: single-token steps past the 8-token window (the attention kernels' window and
    sinks), output and router biases, and the biased, clamped experts (prefill on qgemm_kernel,
    single tokens on the fused kernels), in F16 and with MXFP4 experts. Measured on the F16
    file: 1.6e-4; 1.6e-2 with the decode kernels ignoring the window, 8.6e-3 ignoring the sinks."""
    from autotune.cache_runtime.engine import Engine

    path = request.getfixturevalue(model)
    prompt = [5, 17, 300, 42, 7, 999, 256, 3, 11, 64, 128, 9]
    logits = []
    for kernels in ("torch", "triton"):
        engine = Engine(path, device=DEVICE, kernels=kernels, max_ctx=64, use_graph=False)
        engine.trace.enabled = True
        engine.prefill(prompt[:9])
        engine.prefill_chunk = 1  # chunks of one token: the decode kernels, at positions 9 to 11
        logits.append((engine.prefill(prompt[9:]).cpu(), engine.trace.ids()))
    (want, want_ids), (got, got_ids) = logits
    assert _rel(got, want) < 3e-3
    np.testing.assert_array_equal(np.sort(got_ids, -1), np.sort(want_ids, -1))


@pytest.mark.parametrize("model", ["gpt_oss_model", "gpt_oss_mxfp4_model"])
def test_gpt_oss_moe_on_the_fused_decode_kernels_matches_the_torch_path(model: str, request: pytest.FixtureRequest,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gpt-oss MoE block on one token (the biased router, the experts' biases and the
    clamped SwiGLU) on the fused single-token kernels, never the unfused ``_biased_experts``,
    against TorchOps: what the block adds to h. Measured (F16, MXFP4 experts): 4.3e-7, 4.3e-7;
    0.39, 0.34 with plain SwiGLU; 0.13, 0.089 without the down bias; above 0.8 without the gate
    or the up bias."""
    from autotune.cache_runtime.engine import Engine

    path = request.getfixturevalue(model)
    want_ops = Engine(path, device=DEVICE, kernels="torch", max_ctx=64).ops
    ops = Engine(path, device=DEVICE, kernels="triton", max_ctx=64, use_graph=False).ops
    monkeypatch.setattr(triton_ops.TritonOps, "_biased_experts", None)  # the unfused path fails
    h = torch.from_numpy(np.random.default_rng(6).standard_normal((1, ops.cfg.n_embd), dtype=np.float32)).to(DEVICE)
    for il in range(ops.cfg.n_layers):
        want, want_ids = want_ops.moe(h.clone(), il)
        got, got_ids = ops.moe(h.clone(), il)
        assert sorted(got_ids[0].tolist()) == sorted(want_ids[0].tolist())
        assert _rel((got - h).cpu(), (want - h).cpu()) < 1e-5


@pytest.fixture(scope="module")
def ragged_model(tmp_path_factory: pytest.TempPathFactory):
    """Two layers of the ragged-tiny preset in Q8_0: widths 288 and 416, no whole super-blocks."""
    from autotune.synth import write_synthetic_model

    path = tmp_path_factory.mktemp("models") / "ragged-tiny-q8_0.gguf"
    write_synthetic_model(path, preset="ragged-tiny", quant="q8_0", seed=0, layers=2)
    return path


def test_rows_of_partial_superblocks_on_triton_kernels_match_the_torch_path(ragged_model) -> None:
    """Every Triton kernel on rows of 9 and 13 blocks of 32 (the fused decode experts and
    router, the dense GEMVs and the output head, prefill's grouped GEMM) against the torch path."""
    from autotune.cache_runtime.engine import Engine

    prompt = [5, 17, 300, 42, 7]
    logits = []
    for kernels in ("torch", "triton"):
        engine = Engine(ragged_model, device=DEVICE, kernels=kernels, max_ctx=64, use_graph=False)
        engine.trace.enabled = True
        prefill = engine.prefill(prompt[:3])
        engine.prefill_chunk = 1  # chunks of one token: the decode kernels, at positions 3 and 4
        logits.append((prefill.cpu(), engine.prefill(prompt[3:]).cpu(), engine.trace.ids()))
    (want_prefill, want, want_ids), (got_prefill, got, got_ids) = logits
    assert _rel(got_prefill, want_prefill) < 3e-3
    assert _rel(got, want) < 3e-3
    np.testing.assert_array_equal(np.sort(got_ids, -1), np.sort(want_ids, -1))


@pytest.mark.gpu
def test_decode_graph_replays_like_eager_and_survives_moving_experts(tiny_model) -> None:
    """Graph replays give eager decoding's tokens; after repointing every expert of layer 0 to
    a pinned host copy, the same graph (no re-capture) gives the same logits."""
    from autotune.cache_runtime.engine import Engine

    prompt = [5, 17, 300, 42, 7, 999]
    eager = Engine(tiny_model, kernels="triton", max_ctx=64, use_graph=False).generate(prompt, 8)
    engine = Engine(tiny_model, kernels="triton", max_ctx=64)
    assert engine.generate(prompt, 8) == eager

    engine.reset()
    engine.prefill(prompt)
    before = engine.decode(3).clone()
    layer = engine.weights.layers[0]
    host = [(layer.gate_exps.data[e].cpu().pin_memory(), layer.up_exps.data[e].cpu().pin_memory(),
             layer.down_exps.data[e].cpu().pin_memory()) for e in range(engine.cfg.n_expert)]
    for e, (gate, up, down) in enumerate(host):
        engine.ops.experts_table.point(0, e, gate, up, down)
    engine.reset()
    engine.prefill(prompt)
    after = engine.decode(3)
    assert torch.equal(after, before)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["deepseek2_model", "deepseek3_model"])
def test_latent_attention_decodes_in_a_graph_like_eager(model: str, request: pytest.FixtureRequest) -> None:
    """MLA reads a decode step's position from the device, so its steps replay as a graph."""
    from autotune.cache_runtime.engine import Engine

    path = request.getfixturevalue(model)
    prompt = [5, 17, 300, 42, 7, 999]
    eager = Engine(path, kernels="triton", max_ctx=64, use_graph=False).generate(prompt, 8)
    engine = Engine(path, kernels="triton", max_ctx=64)
    assert engine.use_graph and engine.generate(prompt, 8) == eager

"""CPU experts (ggml's kernels over the quantized stacks in place) against the runtime's
dequantize-and-matmul path, on tiny synthetic models of each weight type."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autotune.cache_runtime.cpu_experts import CACHED_GRAPHS, CpuExperts
from autotune.cache_runtime.ggml_cpu import CpuBackend, cpu_features
from autotune.cache_runtime.torch_ops import TorchOps, glu
from autotune.cache_runtime.weights import ModelWeights, QTensor, load_weights
from autotune.errors import ModelFileError
from autotune.synth import write_synthetic_model

pytest.importorskip("llama_cpp")  # its libraries bring ggml's CPU kernels

QUANTS = ["q4_k", "q6_k", "q8_0", "q4_k_m", "f16", "q4_0", "iq4_xs"]  # q4_k_m: Q4_K gate/up, Q6_K down
LAYER = 1


@pytest.fixture(scope="module", params=[*QUANTS, "gpt-oss"])
def weights(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelWeights:
    """``gpt-oss``: gpt-oss-tiny, whose experts have biases and the clamped SwiGLU (Q4_K_M)."""
    preset, quant = ("gpt-oss-tiny", "q4_k_m") if request.param == "gpt-oss" else ("tiny", request.param)
    path = tmp_path_factory.mktemp("cpu-experts") / f"{preset}-{quant}.gguf"
    write_synthetic_model(path, preset=preset, quant=quant, seed=0)
    return load_weights(path)


@pytest.fixture(scope="module")
def backend() -> Iterator[CpuBackend]:
    backend = CpuBackend(2)
    yield backend
    backend.close()


def _experts(weights: ModelWeights, backend: CpuBackend, layer: int = LAYER, repack: bool = False) -> CpuExperts:
    lw = weights.layers[layer]
    biases = tuple(None if b is None else b.clone() for b in (lw.gate_exps_b, lw.up_exps_b, lw.down_exps_b))
    return CpuExperts(lw.gate_exps, lw.up_exps, lw.down_exps, backend, repack=repack, biases=biases,
                      act=weights.config.expert_act)



def _forward(experts: CpuExperts, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each token (a row of ``x``) through its experts ``ids`` with weights ``w``, one
    ``forward_token`` call a token, as the hybrid cache computes a token's misses."""
    return torch.stack([torch.from_numpy(experts.forward_token(x[t].numpy(), ids[t].numpy().astype(np.int32),
                                                               w[t].numpy().astype(np.float32)).copy())
                        for t in range(len(x))])


def _selection(weights: ModelWeights, tokens: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Activations, each token's distinct experts and their weights, as routing gives them."""
    cfg = weights.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cfg.n_embd, generator=gen)
    ids = torch.stack([torch.randperm(cfg.n_expert, generator=gen)[: cfg.n_expert_used] for _ in range(tokens)])
    return x, ids, torch.rand(tokens, cfg.n_expert_used, generator=gen)


def _ggml_rounding(x: torch.Tensor, weight_type: str) -> torch.Tensor:
    """``x`` as ggml's CPU kernels see it: quantized to the weight type's ``vec_dot_type``
    (Q8_K for the K-quants and IQ4_XS, Q8_0 for Q8_0 and Q4_0, F16 for F16), as ggml-quants.c rounds."""
    if weight_type in ("Q4_K", "Q5_K", "Q6_K", "IQ4_XS"):
        blocks = x.reshape(-1, 256)
        largest = blocks.gather(1, blocks.abs().argmax(1, keepdim=True))  # signed
        iscale = -127.0 / largest
        return (torch.round(iscale * blocks).clamp(max=127) / iscale).reshape(x.shape)
    if weight_type in ("Q8_0", "Q4_0"):
        blocks = x.reshape(-1, 32)
        amax = blocks.abs().amax(1, keepdim=True)
        return (torch.round(blocks * (127 / amax)) * (amax / 127).half().float()).reshape(x.shape)
    assert weight_type == "F16"
    return x.half().float()


def _rounded_reference(weights: ModelWeights, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The experts from the runtime's dequantized weights, in float64, with ggml's activation rounding."""
    lw = weights.layers[LAYER]
    out = torch.zeros(x.shape, dtype=torch.float64)

    def bias(b: torch.Tensor | None, e: int) -> torch.Tensor | float:
        return 0.0 if b is None else b[e].double()

    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t].tolist()):
            gate, up, down = (m[e].dequantize().double() for m in (lw.gate_exps, lw.up_exps, lw.down_exps))
            xq = _ggml_rounding(x[t], lw.gate_exps.qtype).double()
            hidden = glu(gate @ xq + bias(lw.gate_exps_b, e), up @ xq + bias(lw.up_exps_b, e),
                         weights.config.expert_act).float()
            out[t] += w[t, j] * (down @ _ggml_rounding(hidden, lw.down_exps.qtype).double() + bias(lw.down_exps_b, e))
    return out.float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_matches_the_runtime_torch_path(weights: ModelWeights, backend: CpuBackend) -> None:
    x, ids, w = _selection(weights, tokens=6)
    experts = _experts(weights, backend)
    expected = TorchOps(weights, kv_cache=None, rope=None).experts(x, w, ids, LAYER)
    got = _forward(experts, x, ids, w)
    # the gap is ggml's 8-bit activations (what llama.cpp computes too), see the next test
    assert _cosine(got, expected) >= 0.9995
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    experts.close()


def test_equals_dequantized_weights_given_ggml_activation_rounding(weights: ModelWeights, backend: CpuBackend) -> None:
    x, ids, w = _selection(weights, tokens=3, seed=1)
    experts = _experts(weights, backend)
    got = _forward(experts, x, ids, w)
    expected = _rounded_reference(weights, x, ids, w)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    experts.close()


def test_a_token_s_chosen_experts_only_add_what_they_add_among_all(weights: ModelWeights, backend: CpuBackend) -> None:
    """Decode's case: a token's missed experts only, against all its experts with the others'
    weights zeroed (rows do not mix); an expert id out of range is refused before ggml aborts."""
    x, ids, w = _selection(weights, tokens=1, seed=4)
    experts = _experts(weights, backend)
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    chosen[0, 1::2] = True
    got = _forward(experts, x, ids[chosen][None], w[chosen][None])
    torch.testing.assert_close(got, _forward(experts, x, ids, w * chosen), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="expert ids"):
        experts.forward_token(x[0].numpy(), np.array([experts.n_expert], dtype=np.int32), w[0, :1].numpy())
    experts.close()


def test_reads_the_stacks_in_place(weights: ModelWeights, backend: CpuBackend) -> None:
    """No copy: zeroing an expert's down matrix in the stack zeroes its contribution."""
    lw = weights.layers[LAYER]
    down = QTensor(lw.down_exps.data.clone(), lw.down_exps.qtype, lw.down_exps.cols)
    experts = CpuExperts(lw.gate_exps, lw.up_exps, down, backend)
    x, ids, w = _selection(weights, tokens=1, seed=4)
    assert _forward(experts, x, ids[:, :1], w[:, :1]).abs().max() > 0
    down.data[int(ids[0, 0])].zero_()
    assert torch.equal(_forward(experts, x, ids[:, :1], w[:, :1]), torch.zeros_like(x))
    experts.close()


def test_threads_and_graph_reuse_change_no_bit(weights: ModelWeights) -> None:
    """Each output row is one thread's dot products, so the thread count cannot change a
    result; neither can a cached graph, evicted and rebuilt (more miss counts than it keeps)."""
    one, two = CpuBackend(1), CpuBackend(2)
    x, _, _ = _selection(weights, tokens=1, seed=5)
    n = min(weights.config.n_expert, CACHED_GRAPHS + 2)
    assert n > CACHED_GRAPHS
    ids = torch.randperm(weights.config.n_expert, generator=torch.Generator().manual_seed(5))[None, :n]
    w = torch.rand(1, n, generator=torch.Generator().manual_seed(6))
    first = _experts(weights, one)
    per_count = [_forward(first, x, ids[:, :k], w[:, :k]) for k in range(1, n + 1)]
    second = _experts(weights, two)
    for k in (n, 1, 2):
        assert torch.equal(_forward(second, x, ids[:, :k], w[:, :k]), per_count[k - 1])
    assert torch.equal(_forward(first, x, ids[:, :1], w[:, :1]), per_count[0])
    for experts, b in ((first, one), (second, two)):
        experts.close()
        b.close()


def test_an_unsupported_weight_type_is_a_clear_error(weights: ModelWeights, backend: CpuBackend) -> None:
    lw = weights.layers[LAYER]
    iq3 = QTensor(lw.gate_exps.data, "TQ1_0", lw.gate_exps.cols)
    with pytest.raises(ModelFileError, match="gate stack's GGML type TQ1_0"):
        CpuExperts(iq3, lw.up_exps, lw.down_exps, backend)


def test_an_activation_ggml_has_no_graph_for_and_misshapen_biases_are_refused(weights: ModelWeights,
                                                                             backend: CpuBackend) -> None:
    lw = weights.layers[LAYER]
    with pytest.raises(ModelFileError, match="no CPU graph here for the gelu activation"):
        CpuExperts(lw.gate_exps, lw.up_exps, lw.down_exps, backend, act="gelu")
    short = torch.zeros(lw.gate_exps.data.shape[0], lw.gate_exps.rows - 1)
    with pytest.raises(ValueError, match="gate biases are not"):
        CpuExperts(lw.gate_exps, lw.up_exps, lw.down_exps, backend, biases=(short, None, None))


def test_stacks_that_do_not_make_one_layer_are_refused(weights: ModelWeights, backend: CpuBackend) -> None:
    lw = weights.layers[LAYER]
    fewer = QTensor(lw.up_exps.data[:2], lw.up_exps.qtype, lw.up_exps.cols)
    with pytest.raises(ValueError, match="do not make one layer's experts"):
        CpuExperts(lw.gate_exps, fewer, lw.down_exps, backend)


def test_misaligned_host_memory_is_refused(weights: ModelWeights, backend: CpuBackend) -> None:
    lw = weights.layers[LAYER]
    stack = lw.gate_exps.data
    shifted = torch.empty(stack.numel() + 64, dtype=torch.uint8)[1 : 1 + stack.numel()].view(stack.shape)
    with pytest.raises(ValueError, match="not 32-byte aligned"):
        CpuExperts(QTensor(shifted, lw.gate_exps.qtype, lw.gate_exps.cols), lw.up_exps, lw.down_exps, backend)



def test_repacked_stacks_give_the_plain_results(weights: ModelWeights, backend: CpuBackend) -> None:
    """The CPU_REPACK kernels compute the same dot products (Q8_K activations) in another order."""
    x, ids, w = _selection(weights, tokens=5, seed=6)
    plain, repacked = _experts(weights, backend), _experts(weights, backend, repack=True)
    expected = _forward(plain, x, ids, w)
    got = _forward(repacked, x, ids, w)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    torch.testing.assert_close(_forward(repacked, x[:1], ids[:1], w[:1]), got[:1], rtol=0, atol=0)
    plain.close()
    repacked.close()


def test_repack_covers_q4_k_and_q4_0_on_avx2_and_leaves_other_types_in_place(weights: ModelWeights,
                                                                            backend: CpuBackend) -> None:
    """Q4_K and Q4_0 are repacked (8x8 interleave) on x86 with AVX2; F16, Q6_K, Q8_0 and IQ4_XS
    have no x86 repack in this ggml, so those stacks stay plain and are read in place."""
    if not {"AVX2", "REPACK"} <= cpu_features():
        pytest.skip("this ggml build has no AVX2 repacked kernels")
    lw = weights.layers[LAYER]
    experts = _experts(weights, backend, repack=True)
    assert experts.repacked == tuple(name for name, stack in zip(("gate", "up", "down"),
                                                                  (lw.gate_exps, lw.up_exps, lw.down_exps))
                                     if stack.qtype in ("Q4_K", "Q4_0"))
    experts.close()


def test_a_repacked_stack_is_a_copy_and_a_plain_one_is_read_in_place(weights: ModelWeights,
                                                                     backend: CpuBackend) -> None:
    lw = weights.layers[LAYER]
    gate = QTensor(lw.gate_exps.data.clone(), lw.gate_exps.qtype, lw.gate_exps.cols)
    experts = CpuExperts(gate, lw.up_exps, lw.down_exps, backend, repack=True)
    x, ids, w = _selection(weights, tokens=1, seed=7)
    before = _forward(experts, x, ids, w)
    gate.data.zero_()
    after = _forward(experts, x, ids, w)
    if "gate" in experts.repacked:
        assert torch.equal(after, before)
    else:
        assert torch.equal(after, torch.zeros_like(x))  # silu(0) * up = 0
    experts.close()


@pytest.mark.parametrize("repack", [False, True])
def test_a_backend_changes_its_thread_pool_and_not_a_bit(weights: ModelWeights, repack: bool) -> None:
    """Plain or repacked, each output row is one thread's work: any thread count, same bits."""
    backend = CpuBackend(2)
    experts = _experts(weights, backend, repack=repack)
    x, ids, w = _selection(weights, tokens=3, seed=8)
    expected = _forward(experts, x, ids, w)
    for n_threads in (1, 3, 7, 2):
        backend.set_threads(n_threads)
        assert backend.n_threads == n_threads and backend.threadpool
        assert torch.equal(_forward(experts, x, ids, w), expected)
    with pytest.raises(ValueError, match="at least one thread"):
        backend.set_threads(0)
    experts.close()
    backend.close()
    assert backend.threadpool == 0

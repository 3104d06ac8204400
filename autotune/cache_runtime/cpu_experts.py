"""A MoE layer's routed experts computed on the CPU by ggml, from the quantized stacks in place.

What llama.cpp does for the experts it keeps on the CPU: ``mul_mat_id`` over the stacked
``ffn_gate_exps`` / ``ffn_up_exps`` / ``ffn_down_exps`` tensors, with ggml's own multithreaded
CPU kernels (each type's ``vec_dot`` against activations quantized to its ``vec_dot_type``).
The ggml tensors point at the stacks' host bytes (the memory map or the pinned home), so no
weight is copied or dequantized.

With ``repack``, a stack whose type ggml-cpu's CPU_REPACK buffer type covers for ``mul_mat_id``
on this CPU is copied once into that layout instead (what llama.cpp does with CPU weights by
default: rows interleaved for its gemv kernels, still quantized, the same bytes again in RAM).
In the vendored ggml of llama-cpp-python 0.3.36 that is Q4_K (also Q4_0, IQ4_NL, MXFP4) on
x86 with AVX2, rows a multiple of 8; Q6_K and Q8_0 are repacked on ARM only. A stack it does
not cover is read in place, as without ``repack``; ``repacked`` names the stacks it covered.

Experts may have biases (per expert, added to the gate, up and down outputs: ``add_id``) and
gpt-oss's clamped SwiGLU (``swiglu_oai``), as llama.cpp's ``build_moe_ffn`` adds them.

A decode token's misses make one graph, laid out as llama.cpp lays out a token's experts: the
token's activation once, against its ``n`` missed experts (``mul_mat_id`` with ``n`` ids for
one row, so the activation is quantized once, not once an expert), summed with the routing
weights by the caller. A graph is built once per miss count and cached.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from autotune.cache_runtime import ggml_cpu
from autotune.cache_runtime.dequant import BLOCK_SIZES
from autotune.cache_runtime.ggml_cpu import GGML_F32, GGML_I32, Binding, Context, CpuBackend, RepackedCopy
from autotune.cache_runtime.support import CPU_ACTIVATIONS
from autotune.cache_runtime.torch_ops import OAI_ALPHA, OAI_LIMIT
from autotune.cache_runtime.weights import QTensor
from autotune.errors import ModelFileError

SUPPORTED_TYPES = tuple(BLOCK_SIZES)  # the runtime's types; ggml has CPU kernels for each
CACHED_GRAPHS = 8  # graphs kept, one per miss count (a layer misses a few experts a token)
STACK_NAMES = ("gate", "up", "down")
Biases = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


@dataclass
class _Graph:
    """The graph for one miss count, and numpy views of its input and output data."""

    context: Context
    graph: int
    x: np.ndarray  # (n_embd,) float32: the token's activation
    ids: np.ndarray  # (n,) int32: the experts it goes through
    out: np.ndarray  # (n, n_embd) float32: each expert's output, down(act(gate x, up x)), biases included


class CpuExperts:
    """One layer's experts on the CPU. ``gate``, ``up`` and ``down`` are the layer's stacks
    (``(n_expert, rows, row_bytes)`` in host memory); ``backend`` sets the threads and may be
    shared by every layer (one computation at a time); ``repack``: see the module's docstring
    (the repacked stacks are copies, so their source memory may go); ``biases``: the gate, up
    and down biases, each None or ``(n_expert, rows)`` float32 in host memory (read in place);
    ``act``: one of ``support.CPU_ACTIVATIONS``."""

    def __init__(self, gate: QTensor, up: QTensor, down: QTensor, backend: CpuBackend, repack: bool = False,
                 biases: Biases = (None, None, None), act: str = "silu"):
        if act not in CPU_ACTIVATIONS:
            raise ModelFileError(f"CPU experts: no CPU graph here for the {act} activation "
                                 f"(supported: {', '.join(CPU_ACTIVATIONS)})")
        for name, stack in zip(STACK_NAMES, (gate, up, down)):
            if stack.qtype not in SUPPORTED_TYPES:
                raise ModelFileError(f"CPU experts: no CPU kernel here for the {name} stack's GGML type "
                                     f"{stack.qtype} (supported: {', '.join(SUPPORTED_TYPES)})")
            if stack.data.dim() != 3:
                raise ValueError(f"CPU experts: the {name} stack is not (n_expert, rows, row_bytes)")
        self.n_expert, self.n_ff = gate.data.shape[0], gate.rows
        self.n_embd = gate.cols
        if up.data.shape[:2] != gate.data.shape[:2] or up.cols != self.n_embd \
                or down.data.shape[:2] != (self.n_expert, self.n_embd) or down.cols != self.n_ff:
            raise ValueError("CPU experts: the gate, up and down stacks do not make one layer's experts")
        self.backend, self.act = backend, act
        self.expert_bytes = sum(stack.data[0].numel() for stack in (gate, up, down))  # what one expert reads
        self.repacked: tuple[str, ...] = ()
        # a repack refused costs a description; each bias one more
        self._weights = Context(0, 3 * len(STACK_NAMES), alloc=False)
        self._stacks: list[int] = []
        self._biases: list[int | None] = []
        self._bindings: list[Binding | RepackedCopy] = []
        self._graphs: OrderedDict[int, _Graph] = OrderedDict()
        try:
            for name, stack, bias in zip(STACK_NAMES, (gate, up, down), biases):
                self._place(name, stack, repack)
                self._biases.append(None if bias is None else self._bind_bias(name, bias, stack.rows))
        except ValueError:
            self.close()
            raise

    def _bind_bias(self, name: str, bias: torch.Tensor, rows: int) -> int:
        """Describe a stack's biases to ggml, read in place: (n_expert, rows) float32."""
        if bias.dtype != torch.float32 or tuple(bias.shape) != (self.n_expert, rows):
            raise ValueError(f"CPU experts: the {name} biases are not ({self.n_expert}, {rows}) float32")
        tensor = self._weights.tensor(GGML_F32, rows, self.n_expert)
        self._bindings.append(Binding(tensor, bias))
        return tensor

    def _place(self, name: str, stack: QTensor, repack: bool) -> None:
        """Describe ``stack`` to ggml: a repacked copy where asked and covered, else in place."""
        def describe() -> int:
            return self._weights.tensor(ggml_cpu.ggml_type(stack.qtype), stack.cols, stack.rows, self.n_expert)

        tensor = describe()
        if repack:
            copy = RepackedCopy(tensor)
            if self._covers(copy, tensor, stack.cols):
                copy.load(stack.data)
                self._bindings.append(copy)
                self._stacks.append(tensor)
                self.repacked += (name,)
                return
            copy.close()
            tensor = describe()  # the refused one's buffer is gone
        self._bindings.append(Binding(tensor, stack.data))
        self._stacks.append(tensor)

    @staticmethod
    def _covers(copy: RepackedCopy, tensor: int, cols: int) -> bool:
        """Whether ggml-cpu repacks ``tensor`` for a ``mul_mat_id`` (asked with a one-token op)."""
        ctx = Context(0, 3, alloc=False)
        try:
            lib = ggml_cpu.api()
            return copy.covers(lib.mul_mat_id(ctx.handle, tensor, ctx.tensor(GGML_F32, cols, 1, 1),
                                              ctx.tensor(GGML_I32, 1, 1)))
        finally:
            ctx.close()

    def _graph(self, n: int) -> _Graph:
        cached = self._graphs.pop(n, None)
        if cached is None:
            cached = self._build(n)
            if len(self._graphs) >= CACHED_GRAPHS:
                self._graphs.popitem(last=False)[1].context.close()
        self._graphs[n] = cached
        return cached

    def _build(self, n: int) -> _Graph:
        # x; gate, up and their biased sums, the product; out and its biased sum
        floats = self.n_embd + n * (2 * self.n_embd + 5 * self.n_ff)
        ctx = Context(4 * (floats + n), 10, alloc=True)
        gate_w, up_w, down_w = self._stacks
        gate_b, up_b, down_b = self._biases
        x = ctx.tensor(GGML_F32, self.n_embd, 1, 1)  # one activation, broadcast to its n experts
        ids = ctx.tensor(GGML_I32, n, 1)
        lib = ggml_cpu.api()

        def biased(y: int, bias: int | None) -> int:
            return y if bias is None else lib.add_id(ctx.handle, y, bias, ids)

        gate = biased(lib.mul_mat_id(ctx.handle, gate_w, x, ids), gate_b)
        up = biased(lib.mul_mat_id(ctx.handle, up_w, x, ids), up_b)
        hidden = lib.swiglu_split(ctx.handle, gate, up) if self.act == "silu" \
            else lib.swiglu_oai(ctx.handle, gate, up, OAI_ALPHA, OAI_LIMIT)
        out = biased(lib.mul_mat_id(ctx.handle, down_w, hidden, ids), down_b)
        return _Graph(
            context=ctx,
            graph=ctx.graph(out),
            x=ggml_cpu.tensor_view(x, torch.float32, (self.n_embd,)).numpy(),
            ids=ggml_cpu.tensor_view(ids, torch.int32, (n,)).numpy(),
            out=ggml_cpu.tensor_view(out, torch.float32, (n, self.n_embd)).numpy(),
        )

    def forward_token(self, x: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """One decode token's ``x`` (n_embd,) float32 through its experts ``ids`` (n,) (distinct,
        n >= 1), summed with ``weights`` (n,) float32; returns (n_embd,) float32, a view that
        the next call with n experts overwrites."""
        self._check_ids(ids)
        graph = self._graph(len(ids))
        graph.x[:] = x
        graph.ids[:] = ids
        self.backend.compute(graph.graph)
        return weights @ graph.out

    def _check_ids(self, experts: np.ndarray) -> None:
        """ggml aborts the process on an expert id out of range: refuse one first."""
        if int(experts.min()) < 0 or int(experts.max()) >= self.n_expert:
            raise ValueError(f"CPU experts: expert ids must lie in [0, {self.n_expert})")

    def close(self) -> None:
        """Free ggml's descriptions of the stacks and the cached graphs (the stacks' memory stays)."""
        for graph in self._graphs.values():
            graph.context.close()
        self._graphs.clear()
        for binding in self._bindings:
            binding.close()
        self._weights.close()

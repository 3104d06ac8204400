"""The forward-pass blocks on fused Triton kernels (the GPU path).

The same contract (``ops.Ops``) as ``TorchOps``, whose multi-token blocks it reuses. A single
token (decode) runs the fused GEMV kernels of ``triton_gemv`` and the attention kernels of
``triton_attention`` (latent attention's, MLA: ``triton_mla``'s, around a torch bmm for the
absorbed query): about ten launches a layer, no host sync, so a step can be captured as one
CUDA graph. Several tokens (prefill) keep TorchOps' norms, RoPE and attention, with the
matrix products and the routed experts on ``qgemm_kernel``. Experts with biases or another
activation than SwiGLU (gpt-oss) take them in the single-token kernels; on several tokens
they run unfused: their gate, up and down products on ``qgemm_kernel``, the biases and the
activation in torch (``_biased_experts``). Decode attention takes the sliding window and the
sinks in its kernels. Under TRITON_INTERPRET=1 the same code runs on the CPU.
"""

from __future__ import annotations

import torch
import triton

from autotune.cache_runtime.expert_table import DOWN, GATE, UP, ExpertTable
from autotune.cache_runtime.kv_cache import KVCache
from autotune.cache_runtime.mla import absorbed, kq_scale
from autotune.cache_runtime.rope import RopeTable
from autotune.cache_runtime.step_counts import PrefetchCounts, count_step
from autotune.cache_runtime.routing import route_layer
from autotune.cache_runtime.torch_ops import TorchOps, expert_bias, glu, with_bias
from autotune.cache_runtime.triton_attention import (attn_combine_kernel, attn_partial_kernel,
                                                      rope_store_kernel)
from autotune.cache_runtime.triton_gemm import dequant_kernel, moe_blocks, qgemm_kernel
from autotune.cache_runtime.triton_gemv import (gemv_kernel, moe_down_kernel, moe_gate_up_kernel,
                                                 router_kernel)
from autotune.cache_runtime.triton_int8 import INT8_TYPES, quantize_rows_kernel
from autotune.cache_runtime.triton_mla import fits, latent_partial_kernel, latent_rope_store_kernel
from autotune.cache_runtime.triton_tiles import QTYPE_CODES, SUPERBLOCK_BYTES, TILE_GROUPS, grid_arg
from autotune.cache_runtime.weights import ModelWeights, QTensor

# Launch shapes (see studies/runtime_full_residency; CHUNK_ROUNDS 2 with GATE_UP_WARPS 4 from
# the H200 sweep in studies/expert_cache, run 6: 305.9 against 291.1 tok/s at full residency).
# The GEMV tiles put one warp on each row (triton_tiles explains how), so rows per program =
# warps per program.
GEMV_WARPS = 4  # warps (= rows) per program of the dense GEMVs
ROUTER_WARPS = 4  # warps (= rows) per program of the router
GATE_UP_WARPS = 4  # warps (= virtual rows, gate and up interleaved) per program
# Down: at least DOWN_ROWS output rows per program, each read from all top-k experts, and as
# many more as keep one warp on each virtual row (top-2 Mixtral: 4 rows of 2 experts).
DOWN_ROWS, DOWN_WARPS = 1, 8
ATTN_SPLITS, ATTN_BLOCK = 16, 64
# latent attention: heads per program (a (16, 512) float32 accumulator), positions per block
LATENT_HEADS, LATENT_BLOCK = 16, 32
GEMM_BM, GEMM_BN, GEMM_WARPS, GEMM_STAGES = 32, 32, 4, 2
CHUNK_ROUNDS = 2  # load rounds per warp per GEMV chunk (more: more loads in flight, more registers)
DENSE_DEQUANT_TOKENS = 64  # from this many tokens on, dense weights go dequant + cuBLAS
DEQUANT_ROWS = 32


def superblocks_per_chunk(qtype: str, cols: int, rounds: int) -> int:
    """Super-blocks per GEMV chunk of rows of ``cols`` elements: ``rounds`` times as many as one
    warp's lanes cover in one round (4, or 2 for the types with 16 groups of 2-byte loads),
    fewer for short rows."""
    per_warp = 32 // TILE_GROUPS[qtype] * rounds
    return min(per_warp, triton.next_power_of_2(triton.cdiv(cols, 256)))


def _type_args(w: QTensor, device: torch.device) -> dict:
    """The kernels' arguments for ``w``'s type, launched on ``device`` (where the weight itself
    may be in host memory). Rows that are not whole 256-element super-blocks (rows of
    32-element blocks: gpt-oss's 2880) must be whole 32-element blocks of at least 256
    elements (the last super-block is read from 256 elements before the row's end), and an
    even number of bytes (the kernels tell the compiler so: not MXFP4 of an odd block count)."""
    if w.cols % 256 and (w.cols < 256 or w.cols % 32):
        raise ValueError(f"the Triton kernels need rows of whole 32-element blocks, at least 256 of them, "
                         f"not {w.cols} elements")
    if w.row_bytes % 2:
        raise ValueError(f"the Triton kernels need rows of an even number of bytes, not {w.row_bytes} "
                         f"({w.cols} elements of {w.qtype})")
    return {"QT": QTYPE_CODES[w.qtype], "SB_BYTES": SUPERBLOCK_BYTES[w.qtype], "iq_grid": grid_arg(w.qtype, device)}


class TritonOps(TorchOps):
    # decode launch shapes an engine may set per cache config; None: the module's constants
    chunk_rounds: int | None = None
    gate_up_warps: int | None = None
    # the experts on 8-bit inputs (triton_int8) where their type has the path: gate+up on the
    # router's, down on gate+up's output rounded by one more launch (cache knob int8_inputs)
    int8_inputs: bool = False

    kernels_read_table = True

    def __init__(self, weights: ModelWeights, kv_cache: KVCache, rope: RopeTable):
        super().__init__(weights, kv_cache, rope)
        self.experts_table = ExpertTable(weights.moe_layers, kv_cache.k.device)  # every step reads it
        self._done = torch.zeros(1, dtype=torch.int32, device=kv_cache.k.device)  # router programs done
        self._dense_tables: dict[int, torch.Tensor] = {}

    def set_launch_shapes(self, chunk_rounds: int, gate_up_warps: int, int8_inputs: bool) -> None:
        self.chunk_rounds, self.gate_up_warps, self.int8_inputs = chunk_rounds, gate_up_warps, int8_inputs

    def count_step(self, ids: torch.Tensor, in_slot: torch.Tensor, hits: torch.Tensor, tokens: torch.Tensor,
                   prefetch: PrefetchCounts | None) -> None:
        count_step(ids, in_slot, hits, tokens, prefetch, fused=True)

    # -- launch helpers ----------------------------------------------------------------

    def _superblocks(self, w: QTensor) -> int:
        return superblocks_per_chunk(w.qtype, w.cols, self.chunk_rounds or CHUNK_ROUNDS)

    def _gemv(self, x: torch.Tensor, ws: list[QTensor], norm: torch.Tensor | None = None,
              resid: torch.Tensor | None = None) -> torch.Tensor:
        """(W x) (+ resid) for x (K,), over one weight or two stacked by rows."""
        w0, w1 = ws[0], ws[-1]
        if w0.qtype != w1.qtype or w0.row_bytes != w1.row_bytes:
            raise ValueError("stacked GEMV weights must share type and width")
        n = sum(w.rows for w in ws)
        out = torch.empty(n, dtype=torch.float32, device=x.device)
        gemv_kernel[(triton.cdiv(n, GEMV_WARPS),)](
            x, x if norm is None else norm, self.cfg.rms_eps, w0.data, w1.data, w0.rows,
            out if resid is None else resid, out, n, row_stride=w0.row_bytes, K=w0.cols,
            HAS_NORM=norm is not None, HAS_RESID=resid is not None, R=GEMV_WARPS,
            S=self._superblocks(w0), BLOCK_K=triton.next_power_of_2(w0.cols),
            num_warps=GEMV_WARPS, **_type_args(w0, x.device))
        return out

    def _dense_table(self, w: QTensor) -> torch.Tensor:
        ptr = w.data.data_ptr()
        if ptr not in self._dense_tables:
            self._dense_tables[ptr] = torch.tensor([ptr], dtype=torch.int64, device=w.data.device)
        return self._dense_tables[ptr]

    def _qgemm(self, a: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor,
               table: torch.Tensor, w: QTensor, slot_a: int, slot_b: int | None = None,
               scale: torch.Tensor | None = None, a_row_div: int = 1) -> torch.Tensor:
        a = a.to(torch.float16).contiguous()  # the tensor cores' operand type, half the bytes
        grid = (groups.numel(), triton.cdiv(w.rows, GEMM_BN))
        qgemm_kernel[grid](
            a, a.stride(0), rows, groups, table, table.stride(-2) if table.dim() > 1 else 1,
            slot_a, slot_a if slot_b is None else slot_b, out if scale is None else scale, out,
            out.stride(0), w.rows, w.row_bytes, a_row_div, K=w.cols, GATED=slot_b is not None,
            SCALED=scale is not None, BM=GEMM_BM, BN=GEMM_BN, num_warps=GEMM_WARPS,
            num_stages=GEMM_STAGES, **_type_args(w, a.device))
        return out

    # -- building blocks ---------------------------------------------------------------

    def _dequant_f16(self, w: QTensor) -> torch.Tensor:
        out = torch.empty(w.rows, w.cols, dtype=torch.float16, device=w.data.device)
        dequant_kernel[(triton.cdiv(w.rows, DEQUANT_ROWS), triton.cdiv(w.cols, 256))](
            w.data, out, w.rows, w.row_bytes, K=w.cols, R=DEQUANT_ROWS, num_warps=4, **_type_args(w, out.device))
        return out

    def linear(self, x: torch.Tensor, w: QTensor) -> torch.Tensor:
        m = x.shape[0]
        if m == 1:
            return self._gemv(x[0], [w])[None]
        if w.qtype in ("F32", "F16", "BF16"):  # the router: keep its float32 precision
            return x @ w.dequantize().T
        if m >= DENSE_DEQUANT_TOKENS:
            return (x.to(torch.float16) @ self._dequant_f16(w).T).float()
        n_blocks = triton.cdiv(m, GEMM_BM)
        rows = torch.arange(n_blocks * GEMM_BM, dtype=torch.int32, device=x.device)
        rows = torch.where(rows < m, rows, -1)
        groups = torch.zeros(n_blocks, dtype=torch.int32, device=x.device)
        out = torch.empty(m, w.rows, dtype=torch.float32, device=x.device)
        return self._qgemm(x, out, rows, groups, self._dense_table(w), w, 0)

    def _fused_experts(self, il: int) -> bool:
        """Whether layer il's experts are what the grouped GEMM fuses for several tokens
        (``plain_experts``, SwiGLU); else (gpt-oss) their products run on ``qgemm_kernel`` and
        the biases and activation in torch. The single-token kernels take every layer."""
        return self.cfg.expert_act == "silu" and self.w.layers[il].plain_experts

    def experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
        lw, cfg = self.w.moe_layers[m], self.cfg
        n, k = ids.shape
        rows, groups = moe_blocks(ids, cfg.n_expert, GEMM_BM)
        table = self.experts_table.table[m]
        if not self._fused_experts(cfg.n_dense_lead + m):
            return self._biased_experts(x, weights, ids, m, rows, groups)
        hidden = torch.empty(n * k, cfg.n_ff_expert, dtype=torch.float32, device=x.device)
        self._qgemm(x, hidden, rows, groups, table, lw.gate_exps, GATE, UP, a_row_div=k)
        y = torch.empty(n * k, cfg.n_embd, dtype=torch.float32, device=x.device)
        self._qgemm(hidden, y, rows, groups, table, lw.down_exps, DOWN,
                    scale=weights.reshape(-1).float().contiguous())
        return y.view(n, k, cfg.n_embd).sum(1)

    def _biased_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, m: int,
                        rows: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``experts`` with each expert's biases and the model's activation (``torch_ops.glu``):
        gate, up and down each one unfused ``qgemm_kernel`` product, the rest in torch."""
        lw, cfg = self.w.moe_layers[m], self.cfg
        n, k = ids.shape
        table = self.experts_table.table[m]
        gate = torch.empty(n * k, cfg.n_ff_expert, dtype=torch.float32, device=x.device)
        up = torch.empty_like(gate)
        self._qgemm(x, gate, rows, groups, table, lw.gate_exps, GATE, a_row_div=k)
        self._qgemm(x, up, rows, groups, table, lw.up_exps, UP, a_row_div=k)
        flat = ids.reshape(-1).long()
        hidden = glu(with_bias(gate, expert_bias(lw.gate_exps_b, flat)), with_bias(up, expert_bias(lw.up_exps_b, flat)),
                     cfg.expert_act)
        y = torch.empty(n * k, cfg.n_embd, dtype=torch.float32, device=x.device)
        self._qgemm(hidden, y, rows, groups, table, lw.down_exps, DOWN)
        y = with_bias(y, expert_bias(lw.down_exps_b, flat)) * weights.reshape(-1, 1).float()
        return y.view(n, k, cfg.n_embd).sum(1)

    # -- single-token blocks -----------------------------------------------------------

    def attn_in(self, h, il):
        if h.shape[0] > 1:
            return super().attn_in(h, il)
        lw = self.w.layers[il]
        qk = self._gemv(h[0], [lw.wq, lw.wk], norm=lw.attn_norm)
        v = self._gemv(h[0], [lw.wv], norm=lw.attn_norm)
        q, k = qk[None, : self.cfg.q_dim], qk[None, self.cfg.q_dim :]
        return with_bias(q, lw.bq), with_bias(k, lw.bk), with_bias(v[None], lw.bv)

    def rope_store(self, q, k, v, il, start):
        if q.shape[0] > 1:
            return super().rope_store(q, k, v, il, start)
        cfg, lw = self.cfg, self.w.layers[il]
        q_out = torch.empty(cfg.n_head, cfg.head_dim, dtype=torch.float32, device=q.device)
        norm_q = lw.q_norm if cfg.qk_norm else q
        norm_k = lw.k_norm if cfg.qk_norm else q
        rope_store_kernel[(cfg.n_head + cfg.n_head_kv,)](
            q, k, v, norm_q, norm_k, self.rope.cos, self.rope.sin, self.kv_cache.pos,
            self.kv_cache.k[il], self.kv_cache.v[il], q_out, cfg.n_head, self.kv_cache.max_ctx, cfg.rms_eps,
            HD=cfg.head_dim, ROT=cfg.rotated_dims, QK_NORM=cfg.qk_norm, NEOX=cfg.rope_neox)
        return q_out[None]

    def attend(self, q, il, start):
        if q.shape[0] > 1:
            return super().attend(q, il, start)
        cfg, dev = self.cfg, q.device
        group = cfg.n_head // cfg.n_head_kv
        m = torch.empty(ATTN_SPLITS, cfg.n_head, dtype=torch.float32, device=dev)
        l = torch.empty_like(m)
        acc = torch.empty(ATTN_SPLITS, cfg.n_head, cfg.head_dim, dtype=torch.float32, device=dev)
        attn_partial_kernel[(cfg.n_head_kv, ATTN_SPLITS)](
            q, self.kv_cache.k[il], self.kv_cache.v[il], self.kv_cache.pos, m, l, acc, cfg.n_head,
            self.kv_cache.max_ctx, cfg.head_dim**-0.5, cfg.window(il), GROUP=group, G_PAD=max(16, triton.next_power_of_2(group)),
            HD=cfg.head_dim, BT=ATTN_BLOCK, N_SPLIT=ATTN_SPLITS,
            N_ITER=triton.cdiv(self.kv_cache.max_ctx, ATTN_BLOCK * ATTN_SPLITS))
        out = torch.empty(1, cfg.q_dim, dtype=torch.float32, device=dev)
        sinks = self.w.layers[il].attn_sinks
        attn_combine_kernel[(cfg.n_head,)](m, l, acc, m if sinks is None else sinks, out, cfg.n_head, HD=cfg.head_dim,
                                           N_SPLIT=ATTN_SPLITS, SINKS=sinks is not None)
        return out

    def latent_attend(self, q, kv, il, start):
        if q.shape[0] > 1 or not fits(self.cfg):
            return super().latent_attend(q, kv, il, start)
        cfg, dev, cache = self.cfg, q.device, self.kv_cache
        lora, rot, n_head = cfg.kv_lora_rank, cfg.rotated_dims, cfg.n_head
        nope = cfg.head_dim - rot
        q_nope = torch.empty(n_head, nope, dtype=torch.float16, device=dev)
        q_rope = torch.empty(n_head, rot, dtype=torch.float16, device=dev)
        latent_rope_store_kernel[(n_head + 1,)](
            q, kv, self.w.layers[il].kv_a_norm, self.rope.cos, self.rope.sin, cache.pos, cache.k[il], q_nope,
            q_rope, n_head, cfg.rms_eps, NOPE=nope, NOPE_PAD=triton.next_power_of_2(nope), LORA=lora, ROT=rot,
            NEOX=cfg.rope_neox)
        wk_b, _ = absorbed(self, il)
        q_latent = torch.bmm(wk_b, q_nope[:, :, None])  # (n_head, lora, 1)
        m = torch.empty(ATTN_SPLITS, n_head, dtype=torch.float32, device=dev)
        l = torch.empty_like(m)
        acc = torch.empty(ATTN_SPLITS, n_head, lora, dtype=torch.float32, device=dev)
        latent_partial_kernel[(ATTN_SPLITS, triton.cdiv(n_head, LATENT_HEADS))](
            q_latent, q_rope, cache.k[il], cache.pos, m, l, acc, n_head, kq_scale(cfg), LORA=lora, ROT=rot,
            HB=LATENT_HEADS, BT=LATENT_BLOCK, N_SPLIT=ATTN_SPLITS,
            N_ITER=triton.cdiv(cache.max_ctx, LATENT_BLOCK * ATTN_SPLITS))
        out = torch.empty(1, n_head, lora, dtype=cache.k.dtype, device=dev)
        attn_combine_kernel[(n_head,)](m, l, acc, m, out, n_head, HD=lora, N_SPLIT=ATTN_SPLITS, SINKS=False)
        return out

    def out_proj(self, a, il, h):
        if a.shape[0] > 1:
            return super().out_proj(a, il, h)
        lw = self.w.layers[il]
        return with_bias(self._gemv(a[0], [lw.wo], resid=h[0])[None], lw.bo)

    def route(self, x: torch.Tensor, m: int, logits: torch.Tensor, xn: torch.Tensor, done: torch.Tensor,
              ids: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor | None = None,
              xn_int8: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        """MoE layer m's router on x (n_embd,): logits (with the router's bias), RMSNorm-ed x
        (xn), top-k ids and weights, a copy of x into ``keep`` if given, and xn in 8-bit blocks
        into ``xn_int8`` if given (``int8_input``'s buffers); ``done``: a zeroed int32 counter
        that only this launch's stream uses. The kernel routes as ``routing.route_layer`` does
        but for expert groups (DeepSeek-V3), which take the ids and weights again from the logits."""
        cfg, lw = self.cfg, self.w.moe_layers[m]
        router = lw.router
        scaled = cfg.expert_weights_scale not in (0.0, 1.0)
        router_kernel[(triton.cdiv(cfg.n_expert, ROUTER_WARPS),)](
            x, lw.ffn_norm, cfg.rms_eps, router.data, logits, xn, x if keep is None else keep,
            done, ids, weights, *(xn_int8 or (xn, xn, xn)),
            logits if lw.router_b is None else lw.router_b, logits if lw.exp_probs_b is None else lw.exp_probs_b,
            float(cfg.expert_weights_scale), cfg.n_expert, row_stride=router.row_bytes, K=router.cols,
            R=ROUTER_WARPS, S=self._superblocks(router), BLOCK_K=triton.next_power_of_2(cfg.n_embd),
            E_PAD=triton.next_power_of_2(cfg.n_expert), TOP_K=cfg.n_expert_used, NORM_TOPK=cfg.norm_topk,
            KEEP=keep is not None, INT8=xn_int8 is not None, GATING=cfg.gating, HAS_BIAS=lw.router_b is not None,
            HAS_SELECT=lw.exp_probs_b is not None, SCALED=scaled, num_warps=ROUTER_WARPS,
            **_type_args(router, x.device))
        if cfg.n_expert_groups > 1:
            routed_weights, routed_ids = route_layer(logits[None], cfg, lw.exp_probs_b)
            ids.view(-1).copy_(routed_ids.view(-1))
            weights.view(-1).copy_(routed_weights.view(-1))

    def int8_input(self, w: QTensor, device: torch.device, rows: int = 1) -> tuple[torch.Tensor, ...] | None:
        """Buffers for ``rows`` inputs of ``w`` in 8-bit blocks (``triton_int8.quantize_store``:
        codes as int32 words, scales, scaled code sums) where ``int8_inputs`` is on and ``w``'s
        type has the path; else None."""
        if not self.int8_inputs or w.qtype not in INT8_TYPES:
            return None
        return (torch.empty(rows, w.cols // 4, dtype=torch.int32, device=device),
                torch.empty(rows, w.cols // 32, dtype=torch.float32, device=device),
                torch.empty(rows, w.cols // 32, dtype=torch.float32, device=device))

    def moe(self, h, il):
        if h.shape[0] > 1:
            return super().moe(h, il)
        cfg, lw, dev, m = self.cfg, self.w.layers[il], h.device, self.cfg.moe_layer(il)
        x, k = h[0], cfg.n_expert_used
        logits = torch.empty(cfg.n_expert, dtype=torch.float32, device=dev)
        xn = torch.empty(cfg.n_embd, dtype=torch.float32, device=dev)
        ids = torch.empty(1, k, dtype=torch.int32, device=dev)
        weights = torch.empty(k, dtype=torch.float32, device=dev)
        keep = self.hooks.router_input(m)
        xn_int8 = self.int8_input(lw.gate_exps, dev)
        self.route(x, m, logits, xn, self._done, ids, weights, keep, xn_int8)
        self.routing.after_route(m, logits[None], weights[None], ids)
        self.hooks.after_router(m, h, kept=keep is not None)
        on_device = self.hooks.offload(m, xn[None], ids, weights[None])  # None: the GPU computes every expert
        skip = on_device is not None
        hidden = torch.empty(k, cfg.n_ff_expert, dtype=torch.float32, device=dev)
        table = self.experts_table.table[m]
        warps = self.gate_up_warps or GATE_UP_WARPS
        gate_b, up_b, down_b = lw.gate_exps_b, lw.up_exps_b, lw.down_exps_b
        moe_gate_up_kernel[(k, triton.cdiv(cfg.n_ff_expert, warps // 2))](
            ids, on_device if skip else ids, xn, table, xn if gate_b is None else gate_b,
            xn if up_b is None else up_b, hidden, *(xn_int8 or (xn, xn, xn)), cfg.n_ff_expert,
            row_stride=lw.gate_exps.row_bytes, K=cfg.n_embd, R=warps, S=self._superblocks(lw.gate_exps),
            SKIP=skip, ACT=cfg.expert_act, HAS_GATE_BIAS=gate_b is not None, HAS_UP_BIAS=up_b is not None,
            INT8=xn_int8 is not None, num_warps=warps, **_type_args(lw.gate_exps, dev))
        hidden_int8 = self.int8_input(lw.down_exps, dev, rows=k)
        if hidden_int8 is not None:
            quantize_rows_kernel[(k,)](hidden, *hidden_int8, K=cfg.n_ff_expert,
                                       BLOCK_K=triton.next_power_of_2(cfg.n_ff_expert), num_warps=4)
        k_pad = triton.next_power_of_2(k)
        rows = max(DOWN_ROWS, DOWN_WARPS // k_pad)
        moe_down_kernel[(triton.cdiv(cfg.n_embd, rows),)](
            hidden, ids, on_device if skip else ids, weights, table, x if down_b is None else down_b, x,
            *(hidden_int8 or (hidden, hidden, hidden)), cfg.n_embd, row_stride=lw.down_exps.row_bytes,
            K=cfg.n_ff_expert, TOP_K=k, K_PAD=k_pad, BN=rows, S=self._superblocks(lw.down_exps), SKIP=skip,
            HAS_BIAS=down_b is not None, INT8=hidden_int8 is not None, num_warps=DOWN_WARPS,
            **_type_args(lw.down_exps, dev))
        if lw.gate_shexp is not None:
            h.add_(self.shared_expert(xn[None], il))
        self.hooks.add_offloaded(m, h)
        return h, ids

    def head(self, h):
        if h.shape[0] > 1:
            return super().head(h)
        return self._gemv(h[0], [self.w.output], norm=self.w.output_norm)[None]

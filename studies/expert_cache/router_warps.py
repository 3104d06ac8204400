"""The router kernel alone (128 experts x 2048, F32, top 8) per ROUTER_WARPS: µs per launch,
median of 5 replays of a graph of 96 launches.

Usage (GPU machine, project root, after `source .gpu/device-setup.sh`):
  python3 studies/expert_cache/router_warps.py
"""

from __future__ import annotations

import torch

from autotune.cache_runtime import triton_ops
from autotune.cache_runtime.weights import QTensor

LAUNCHES = 96


def main() -> None:
    dev = "cuda"
    weight = torch.randn(128, 2048, device=dev) * 0.02
    router = QTensor(weight.view(torch.uint8).reshape(128, -1), "F32", 2048)
    ops = object.__new__(triton_ops.TritonOps)  # route() needs only cfg and the layer's weights
    ops.cfg = type("Cfg", (), dict(rms_eps=1e-6, n_expert=128, n_expert_used=8, n_embd=2048, norm_topk=True))()
    layer = type("Layer", (), dict(router=router, ffn_norm=torch.ones(2048, device=dev)))()
    ops.w = type("W", (), dict(layers=[layer]))()
    x = torch.randn(2048, device=dev)
    logits, xn = torch.empty(128, device=dev), torch.empty(2048, device=dev)
    done = torch.zeros(1, dtype=torch.int32, device=dev)
    ids, weights = torch.empty(8, dtype=torch.int32, device=dev), torch.empty(8, device=dev)
    for warps in (1, 2, 4, 8):
        triton_ops.ROUTER_WARPS = warps
        for _ in range(3):  # compile outside the capture
            ops.route(x, 0, logits, xn, done, ids, weights)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(LAUNCHES):
                ops.route(x, 0, logits, xn, done, ids, weights)
        graph.replay()
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000 / LAUNCHES)
        print(f"ROUTER_WARPS {warps}: {sorted(times)[2]:.2f} us per launch, ids {ids.tolist()}", flush=True)


if __name__ == "__main__":
    main()

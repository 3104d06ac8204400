"""Measure the runtime at full residency as llama-bench does: pp512 and tg128.

Usage: python bench_runtime.py MODEL.gguf OUT_DIR [--llama LLAMA.npz] [--reps 5] [--sweep]

One process, one load: the logits check against llama.cpp (when --llama is given), then
prefill of 512 random tokens and decode of 128 tokens from an empty cache (one CUDA graph
replay per token, the greedy token fed back on the device), each repeated --reps times
(median reported), a per-kernel profile of one decode step and one prefill, and with
--sweep a few alternative launch shapes. Writes OUT_DIR/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autotune.cache_runtime import triton_ops
from autotune.cache_runtime.engine import Engine


def _timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def prefill_tps(engine: Engine, tokens: list[int], reps: int) -> list[float]:
    def run():
        engine.reset()
        engine.prefill(tokens)

    run()  # compile
    return [len(tokens) / _timed(run) for _ in range(reps)]


def decode_tps(engine: Engine, n: int, reps: int) -> list[float]:
    def run():
        engine.reset()
        engine.decode(1)
        for _ in range(n - 1):
            engine.decode()

    run()  # capture
    return [n / _timed(run) for _ in range(reps)]


def profile(engine: Engine, tokens: list[int]) -> dict[str, list]:
    """CUDA time per kernel name (microseconds) of one eager decode step and one prefill."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for name, fn in (("decode_step", lambda: engine.decode(1)), ("prefill", lambda: engine.prefill(tokens))):
        engine.reset()
        use_graph, engine.use_graph = engine.use_graph, False
        fn()
        engine.reset()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        engine.use_graph = use_graph
        rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]
        out[name] = [[e.key[:60], e.count, round(e.device_time_total, 1)] for e in rows]
    return out


DECODE_SHAPES = [  # (GEMV_ROWS, GEMV_WARPS, GATE_UP_ROWS, DOWN_ROWS, ATTN_SPLITS)
    (4, 4, 8, 2, 16),
    (16, 8, 16, 4, 16),
    (8, 4, 8, 1, 8),
]
PREFILL_SHAPES = [(64, 32, 4), (32, 64, 8), (64, 64, 8)]  # (GEMM_BM, GEMM_BN, GEMM_WARPS)


def sweep(engine: Engine, tokens: list[int], budget_s: float) -> dict[str, list]:
    names = ("GEMV_ROWS", "GEMV_WARPS", "GATE_UP_ROWS", "DOWN_ROWS", "ATTN_SPLITS")
    default = [getattr(triton_ops, n) for n in names]
    start = time.perf_counter()
    decode = []
    for shape in DECODE_SHAPES:
        if time.perf_counter() - start > budget_s:
            break
        for n, v in zip(names, shape):
            setattr(triton_ops, n, v)
        engine._graphs.clear()
        decode.append([list(shape), statistics.median(decode_tps(engine, 128, 3))])
    for n, v in zip(names, default):
        setattr(triton_ops, n, v)
    engine._graphs.clear()
    prefill = []
    gemm_names = ("GEMM_BM", "GEMM_BN", "GEMM_WARPS")
    gemm_default = [getattr(triton_ops, n) for n in gemm_names]
    for shape in PREFILL_SHAPES:
        if time.perf_counter() - start > budget_s:
            break
        for n, v in zip(gemm_names, shape):
            setattr(triton_ops, n, v)
        prefill.append([list(shape), statistics.median(prefill_tps(engine, tokens, 3))])
    for n, v in zip(gemm_names, gemm_default):
        setattr(triton_ops, n, v)
    return {"decode": decode, "prefill": prefill}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out_dir")
    parser.add_argument("--llama", default=None, help="llama_logits.py output to compare with")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-budget", type=float, default=120.0)
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def save() -> None:
        (out_dir / "runtime.json").write_text(json.dumps(result, indent=1))

    start = time.perf_counter()
    engine = Engine(args.model, max_ctx=4096)
    torch.cuda.synchronize()
    result["load_s"] = round(time.perf_counter() - start, 1)
    result["vram_after_load_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print("loaded", result, flush=True)

    def stage(name: str, fn) -> None:
        """Run one measurement; a failure is recorded and the next one still runs."""
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a study reports every outcome
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, result[name], flush=True)
        save()

    if args.llama:
        from compare_logits import compare

        stage("vs_llama_cpp", lambda: compare(engine, dict(np.load(args.llama))))

    tokens = np.random.default_rng(0).integers(0, engine.cfg.n_vocab, 512).tolist()
    def summary(samples: list[float]) -> dict:
        return {"median_tps": round(statistics.median(samples), 1), "samples": [round(s, 1) for s in samples]}

    stage("decode_tg128", lambda: summary(decode_tps(engine, 128, args.reps)))
    stage("prefill_pp512", lambda: summary(prefill_tps(engine, tokens, args.reps)))
    result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    stage("profile", lambda: profile(engine, tokens))
    if args.sweep:
        stage("sweep", lambda: sweep(engine, tokens, args.sweep_budget))


if __name__ == "__main__":
    main()

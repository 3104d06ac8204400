"""Measure the runtime at full residency as llama-bench does: pp512 and tg128.

Usage: python bench_runtime.py MODEL.gguf OUT_DIR [--llama LLAMA.npz] [--reps 5] [--sweep] [--int8]

One process, one load: the logits check against llama.cpp (when --llama is given), then
prefill of 512 random tokens and decode of 128 tokens from an empty cache (one CUDA graph
replay per token, the greedy token fed back on the device), each repeated --reps times
(median reported), a per-kernel profile of one decode step and one prefill, and with
--sweep a few alternative launch shapes. With --int8, decode (and the logits check) again with
the experts on the 8-bit input (``TritonOps.int8_inputs``, cache knob ``int8_inputs``; the types of
``triton_int8``), an A/B in one process: ``decode_tg128_int8``, ``vs_llama_cpp_int8``, and a
profile of one decode step. Writes OUT_DIR/runtime.json.
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


DECODE_KNOBS = ("GEMV_WARPS", "GATE_UP_WARPS", "DOWN_ROWS", "DOWN_WARPS", "ATTN_SPLITS", "CHUNK_ROUNDS")
DECODE_SHAPES = [(8, 8, 1, 8, 16, 2), (4, 4, 2, 8, 16, 2), (2, 8, 1, 4, 8, 2), (4, 16, 2, 16, 16, 2),
                 (4, 4, 1, 8, 16, 4), (4, 8, 1, 16, 16, 4), (4, 4, 1, 16, 16, 2), (4, 8, 1, 8, 16, 1)]
PREFILL_KNOBS = ("GEMM_BM", "GEMM_BN", "GEMM_WARPS", "GEMM_STAGES")
PREFILL_SHAPES = [(32, 64, 4, 2), (64, 32, 4, 2), (16, 64, 4, 2), (32, 32, 8, 3)]


def _try_shapes(knobs, shapes, measure, deadline: float) -> list:
    """tok/s (median of 3) for each launch shape, until the deadline; defaults restored."""
    default = [getattr(triton_ops, n) for n in knobs]
    results = []
    for shape in shapes:
        if time.perf_counter() > deadline:
            break
        for n, v in zip(knobs, shape):
            setattr(triton_ops, n, v)
        try:
            results.append([list(shape), round(statistics.median(measure()), 1)])
        except Exception as exc:  # noqa: BLE001 - a shape that does not fit is a result too
            results.append([list(shape), f"{type(exc).__name__}: {str(exc)[:120]}"])
    for n, v in zip(knobs, default):
        setattr(triton_ops, n, v)
    return results


def sweep(engine: Engine, tokens: list[int], budget_s: float) -> dict[str, list]:
    """Other launch shapes of triton_ops, decode then prefill, within ``budget_s``."""
    deadline = time.perf_counter() + budget_s

    def decode():
        engine._graphs.clear()  # a new shape needs a new capture
        return decode_tps(engine, 128, 3)

    result = {"decode": _try_shapes(DECODE_KNOBS, DECODE_SHAPES, decode, deadline)}
    engine._graphs.clear()
    result["prefill"] = _try_shapes(PREFILL_KNOBS, PREFILL_SHAPES, lambda: prefill_tps(engine, tokens, 3),
                                    deadline)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out_dir")
    parser.add_argument("--llama", default=None, help="llama_logits.py output to compare with")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-budget", type=float, default=120.0)
    parser.add_argument("--int8", action="store_true", help="also decode with gate+up on the 8-bit input")
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
    if args.int8:
        engine.ops.int8_inputs = True
        engine._graphs.clear()  # the 8-bit path needs a new capture
        if args.llama:
            stage("vs_llama_cpp_int8", lambda: compare(engine, dict(np.load(args.llama))))
        stage("decode_tg128_int8", lambda: summary(decode_tps(engine, 128, args.reps)))
        stage("profile_int8", lambda: profile(engine, tokens)["decode_step"])


if __name__ == "__main__":
    main()

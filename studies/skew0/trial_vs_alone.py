"""Why the tuner's llama-bench trials read below llama-bench run alone (the skew-0 bar, issue 6).

One llama.cpp config, measured in rotating rounds four ways on the same GPU in one call:

- ``trial``: the tuner's path, ``LlamaBenchBackend.run_trials`` (its own child process, the
  VRAM sampler, the tuner's argv with ``-v``);
- ``argv``: that same argv run directly, no child, no sampler;
- ``argv_tg128``: that argv with llama_side's decode test (``-n 128 -r 3``);
- ``side``: llama_side.py's argv for the config, its pp2048 test left out (``-p 512 -n 128 -r 3``,
  no ``-lm``, ``-ctk``, ``-nopo`` or ``-v``).

Then each of ``--peak-configs`` once with ``-p CTX -n 0 -r 1 --no-warmup`` under the VRAM
sampler: its peak holding a CTX-token context (what the exported command serves), measured.

Usage (GPU machine): python3 studies/skew0/trial_vs_alone.py MODEL OUT.json [--rounds R]
    [--n-cpu-moe N] [--ubatch U] [--threads T] [--peak-configs NCMOE:UB ...] [--ctx CTX]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from autotune.backends.base import Workload
from autotune.backends.llama_cpp.commands import bench_argv
from autotune.backends.llama_cpp.bench import LlamaBenchBackend, find_llama_bench
from autotune.isolation.vram import VramSampler

GIB = 2**30
TUNER_WORKLOAD = Workload(n_prompt=512, n_gen=64, repetitions=2, n_ctx=4096)  # run 12 call d's


def decode_samples(stdout: str) -> list[float]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [round(s, 2) for row in rows if row["n_gen"] for s in row["samples_ts"]]


def run_argv(argv: list[str]) -> list[float]:
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return decode_samples(done.stdout)


def measure_ways(config: dict, model: str, binary: str) -> tuple[dict[str, Callable[[], list[float]]], list[str]]:
    """The four ways by name, and the tuner's argv (taken from the backend, so it is exactly the trial's)."""
    backend = LlamaBenchBackend(binary)
    argv = backend._item(config, Path(model), TUNER_WORKLOAD)["argv"]
    tg128 = [*argv]
    tg128[tg128.index("-n") + 1], tg128[tg128.index("-r") + 1] = "128", "3"
    side = [binary, "-m", model, "-p", "512", "-n", "128", "-r", "3", "-o", "jsonl", "-ngl", "99", "-fa", "1",
            "-t", str(config["n_threads"]), "-b", "2048", "-ncmoe", str(config["n_cpu_moe"]),
            "-ub", str(config["n_ubatch"])]

    def trial() -> list[float]:
        [result] = backend.run_trials([config], Path(model), TUNER_WORKLOAD, deadline_s=180)
        if not result.ok:
            raise RuntimeError(result.message)
        return [round(s, 2) for s in result.decode_tps.samples]

    ways = {"trial": trial, "argv": lambda: run_argv(argv), "argv_tg128": lambda: run_argv(tg128),
            "side": lambda: run_argv(side)}
    return ways, argv


def served_peak(model: str, binary: str, n_cpu_moe: int, ubatch: int, ctx: int, threads: int) -> float | None:
    config = {"n_gpu_layers": 49, "n_cpu_moe": n_cpu_moe, "n_ubatch": ubatch, "flash_attn": True, "n_threads": threads}
    argv = bench_argv(config, model, Workload(n_prompt=ctx, n_gen=0, repetitions=1), binary) + ["--no-warmup"]
    with VramSampler() as sampler:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        sampler.watch(process.pid)
        process.wait()
        peak = sampler.peak
    return None if peak is None else round(peak / GIB, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-cpu-moe", type=int, default=22)
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--peak-configs", nargs="*", default=["21:512", "21:256", "22:512"])
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    binary = find_llama_bench()
    config = {"n_gpu_layers": 49, "n_cpu_moe": args.n_cpu_moe, "n_ubatch": args.ubatch, "flash_attn": True,
              "n_threads": args.threads, "n_threads_batch": args.threads, "n_ctx": 4096}
    ways, argv = measure_ways(config, args.model, binary)
    report: dict = {"config": config, "tuner_argv": [Path(a).name if a == binary else a for a in argv],
                    "samples": {name: [] for name in ways}, "order": []}
    names = list(ways)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            started = time.monotonic()
            samples = ways[name]()
            report["samples"][name] += samples
            report["order"].append({"way": name, "samples": samples, "seconds": round(time.monotonic() - started, 1)})
            print(f"round {round_index + 1} {name}: {samples} ({time.monotonic() - started:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    report["medians"] = {name: statistics.median(s) for name, s in report["samples"].items() if s}
    print("medians", report["medians"], flush=True)
    report["served_peaks_gib"] = {}
    for spec in args.peak_configs:
        n_cpu_moe, ubatch = map(int, spec.split(":"))
        peak = served_peak(args.model, binary, n_cpu_moe, ubatch, args.ctx, args.threads)
        report["served_peaks_gib"][f"ncmoe{n_cpu_moe}_ub{ubatch}_ctx{args.ctx}"] = peak
        print(f"ncmoe {n_cpu_moe} ub {ubatch}: peak {peak} GiB holding {args.ctx} tokens", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""llama.cpp's side of issue 6's bars: its best configs at each cap and all-GPU, on this GPU.

Each config runs in its own llama-bench process (-p 512,2048 -n 128 -r R, flash attention,
16 threads) while pynvml samples that process's GPU memory (CUDA context included), so a
config counts for a cap only where its measured peak fits. The configs: the fewest CPU
expert layers that fit 16 and 12 GiB on the H200 machine with ubatch 512 (the best decode
configs of studies/tuner_vs_grid, n_cpu_moe 9 / 20 on the H100 machine, took 16.21 / 12.20
GiB there), and with ubatch 2048 (faster prefill, a larger compute buffer).

Usage (GPU machine): python3 studies/expert_cache/llama_side.py MODEL OUT.json [--reps R] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time

import pynvml

GIB = 2**30
CONFIGS = {  # name -> extra llama-bench arguments
    "all_gpu_ub512": ["-ub", "512"],
    "all_gpu_ub2048": ["-ub", "2048"],
    "ncmoe10_ub512": ["-ncmoe", "10", "-ub", "512"],
    "ncmoe13_ub2048": ["-ncmoe", "13", "-ub", "2048"],
    "ncmoe21_ub512": ["-ncmoe", "21", "-ub", "512"],
    "ncmoe24_ub2048": ["-ncmoe", "24", "-ub", "2048"],
}
NAMED = re.compile(r"ncmoe(\d+)_ub(\d+)")  # any other --n-cpu-moe / ubatch pair, by name


def config_args(name: str) -> list[str]:
    """llama-bench's extra arguments for a config name (CONFIGS', or ncmoeN_ubU)."""
    if name in CONFIGS:
        return CONFIGS[name]
    match = NAMED.fullmatch(name)
    if match is None:
        raise SystemExit(f"unknown config {name!r}: one of {', '.join(CONFIGS)} or ncmoeN_ubU")
    return ["-ncmoe", match[1], "-ub", match[2]]


def process_peak(proc: subprocess.Popen, handle) -> tuple[int, str, str]:
    """Run ``proc`` to its end, sampling its GPU memory every 20 ms; (peak bytes, stdout, stderr)."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.pid == proc.pid:
                    peak = max(peak, int(p.usedGpuMemory or 0))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return peak, out, err


def main(model: str, out_path: str, reps: int = 3, only: list[str] | None = None) -> None:
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    report = {}
    for name in only or CONFIGS:
        extra = config_args(name)
        argv = ["llama-bench", "-m", model, "-p", "512,2048", "-n", "128", "-r", str(reps), "-o", "jsonl",
                "-ngl", "99", "-fa", "1", "-t", "16", "-b", "2048", *extra]
        peak, out, err = process_peak(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                       text=True), handle)
        tests = {}
        for line in out.splitlines():
            row = json.loads(line)
            key = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            tests[key] = {"mean": round(row["avg_ts"], 1), "std": round(row["stddev_ts"], 1),
                          "samples": [round(s, 1) for s in row["samples_ts"]]}
        report[name] = {"argv": argv, "peak_vram_gib": round(peak / GIB, 3), "tests": tests,
                        "error": err[-1500:] if not tests else None}
        print(name, f"peak {peak / GIB:.2f} GiB", {k: v["mean"] for k, v in tests.items()}, flush=True)
        json.dump(report, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="+", help=f"run these configs only ({', '.join(CONFIGS)}, or ncmoeN_ubU)")
    args = parser.parse_args()
    main(args.model, args.out, args.reps, args.only)

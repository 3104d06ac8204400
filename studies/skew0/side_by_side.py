"""The tuner's stored winner against llama.cpp's best configs at the cap, measured alternately.

Issue 6's skew-0 bar: the tuner's winner is no slower than llama.cpp's best at the cap. Every
config, the winner and each ``--reference`` (``NCMOE:UBATCH`` at 16 threads, flash attention),
is measured through its backend's own trial path (llama-bench for llama.cpp configs, the
runtime for a cache winner) in ROUNDS rotating rounds; medians and ratios go to OUT.json.

Usage (GPU machine): python3 studies/skew0/side_by_side.py MODEL DB_URL OUT.json CAP_GIB
    [--reference 21:512 21:256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from autotune.backends.base import Workload
from autotune.backends.registry import get_backend
from autotune.model_info import inspect_model
from autotune.storage import Database

WORKLOAD = Workload(n_prompt=512, n_gen=128, repetitions=3, n_ctx=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("cap_gib", type=float)
    parser.add_argument("--reference", nargs="+", default=["21:512", "21:256"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = Path(args.model)
    cap = int(args.cap_gib * 2**30)
    [winner] = [b for b in Database(args.url).best_configs(inspect_model(model).fingerprint, vram_cap=cap)]
    configs = {f"tuner ({winner.backend})": (winner.backend, dict(winner.config))}
    for spec in args.reference:
        n_cpu_moe, ubatch = map(int, spec.split(":"))
        configs[f"llama.cpp ncmoe{n_cpu_moe} ub{ubatch}"] = (
            "llama_bench", {"n_gpu_layers": 99, "n_cpu_moe": n_cpu_moe, "n_ubatch": ubatch, "flash_attn": True,
                            "n_threads": 16, "n_threads_batch": 16, "n_ctx": WORKLOAD.n_ctx})
    report = {"workload": vars(WORKLOAD), "configs": {name: c for name, (_, c) in configs.items()},
              "winner_recorded": [winner.objective_mean, winner.objective_std],
              "samples": {name: [] for name in configs}, "peaks_gib": {name: [] for name in configs}}
    names = list(configs)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            backend_name, config = configs[name]
            [result] = get_backend(backend_name).run_trials([config], model, WORKLOAD, deadline_s=240)
            samples = [round(s, 2) for s in result.decode_tps.samples] if result.ok else []
            report["samples"][name] += samples
            if result.peak_vram_bytes is not None:
                report["peaks_gib"][name].append(round(result.peak_vram_bytes / 2**30, 3))
            print(f"round {round_index + 1} {name}: {samples or result.message.splitlines()[-1]}", flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    medians = {name: statistics.median(s) for name, s in report["samples"].items() if s}
    tuner = medians.get(names[0])
    report["medians"] = medians
    report["ratios"] = {name: tuner / m for name, m in medians.items() if tuner and name != names[0]}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("medians", medians, "\ntuner / reference", report["ratios"], flush=True)


if __name__ == "__main__":
    main()

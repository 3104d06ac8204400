"""The grid's best config and the tuner's winner, measured alternately in one run.

For each cap: the best grid row that fit (studies/tuner_vs_grid/data/grid.json) and the
winner the tuner stored, each run by llama-bench (-p 0 -n 64 -r 2) in ROUNDS alternating
rounds; the medians and their ratio go to a JSON file.
Usage (GPU machine): python3 studies/tuner_vs_grid/side_by_side.py MODEL GRID.json DB_URL OUT.json CAP_GIB...
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from autotune.backends.base import Workload
from autotune.backends.llama_cpp.commands import bench_argv
from autotune.model_info import inspect_model
from autotune.storage import Database

ROUNDS = 5
WORKLOAD = Workload(n_prompt=0, n_gen=64, repetitions=2)


def decode_samples(config: dict, model: str) -> list[float]:
    out = subprocess.run(bench_argv(config, model, WORKLOAD), capture_output=True, text=True, check=True).stdout
    return [s for line in out.splitlines() for s in json.loads(line)["samples_ts"]]


def main(model: str, grid_path: str, url: str, out_path: str, caps: list[float]) -> None:
    rows = json.load(open(grid_path))["rows"]
    fingerprint = inspect_model(model).fingerprint
    report = {}
    for cap in caps:
        fitting = [r for r in rows if r["peak_vram_mib"] <= cap * 1024]
        grid_best = max(fitting, key=lambda r: r["decode_tps"])
        grid_config = {k: grid_best[k] for k in ("n_cpu_moe", "n_threads", "n_ubatch")} | {
            "flash_attn": bool(grid_best["flash_attn"]), "n_gpu_layers": 99, "n_batch": 2048}
        [winner] = [b for b in Database(url).best_configs(fingerprint) if b.vram_cap == int(cap * 2**30)]
        tuner_config = {k: v for k, v in winner.config.items() if k != "n_ctx"}
        samples = {"grid": [], "tuner": []}
        for _ in range(ROUNDS):
            samples["grid"] += decode_samples(grid_config, model)
            samples["tuner"] += decode_samples(tuner_config, model)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        report[f"{cap:g}G"] = {"grid_config": grid_config, "tuner_config": tuner_config, "samples": samples,
                               "medians": medians, "ratio": medians["tuner"] / medians["grid"],
                               "grid_recorded": grid_best["decode_tps"]}
        print(f"cap {cap:g} GiB: grid best {medians['grid']:.1f}, tuner {medians['tuner']:.1f} tok/s "
              f"(ratio {medians['tuner'] / medians['grid']:.3f})", flush=True)
    json.dump(report, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], [float(c) for c in sys.argv[5:]])

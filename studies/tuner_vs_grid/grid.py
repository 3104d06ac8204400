"""Reference grid for the tuner: llama-bench over n_cpu_moe x threads x ubatch x flash attention.

One llama-bench process per (n_cpu_moe, ubatch) measures every threads x fa combination
(-r repetitions each); nvidia-smi samples the device's used memory every 100 ms while it
runs, so each row carries the peak VRAM of its process (the CUDA context included).
Usage (GPU machine): python3 studies/tuner_vs_grid/grid.py MODEL.gguf OUT.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

N_CPU_MOE = [10, 11, 12, 13, 14, 16, 20, 21, 22, 23, 24, 32, 48]
THREADS = "8,16"
UBATCH = [512, 2048]
FLASH_ATTN = "0,1"
N_GEN, REPETITIONS = 64, 2


def _used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def _peak_while(process: subprocess.Popen) -> int:
    peak = 0
    while process.poll() is None:
        peak = max(peak, _used_mib())
        time.sleep(0.1)
    return peak


def main(model: str, out_path: str) -> None:
    baseline = _used_mib()
    rows = []
    for n_cpu_moe in N_CPU_MOE:
        for ubatch in UBATCH:
            command = ["llama-bench", "-m", model, "-ngl", "99", "-ncmoe", str(n_cpu_moe), "-t", THREADS,
                       "-ub", str(ubatch), "-b", "2048", "-fa", FLASH_ATTN, "-p", "0", "-n", str(N_GEN),
                       "-r", str(REPETITIONS), "-o", "jsonl"]
            started = time.time()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            peak = [0]
            sampler = threading.Thread(target=lambda: peak.__setitem__(0, _peak_while(process)))
            sampler.start()
            stdout, _ = process.communicate()
            sampler.join()
            for line in stdout.splitlines():
                record = json.loads(line)
                rows.append({
                    "n_cpu_moe": n_cpu_moe, "n_ubatch": ubatch, "n_threads": record["n_threads"],
                    "flash_attn": int(bool(record["flash_attn"])), "decode_tps": record["avg_ts"],
                    "decode_std": record["stddev_ts"], "samples": record.get("samples_ts", []),
                    "peak_vram_mib": peak[0] - baseline,
                })
            print(f"ncmoe {n_cpu_moe} ub {ubatch}: peak {peak[0] - baseline} MiB, "
                  f"{[round(r['decode_tps'], 1) for r in rows[-4:]]} tok/s, {time.time() - started:.0f} s", flush=True)
    Path(out_path).write_text(json.dumps({"model": model, "n_gen": N_GEN, "repetitions": REPETITIONS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

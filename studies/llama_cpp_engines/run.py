"""Do the llama_cpp and llama_bench engines agree? Decode/prefill speed and peak VRAM, side by side.

For each config (all on the GPU, and the experts of the first 12 layers on the CPU) and each
engine, one trial as the tuner runs it (-p 512 -n 128 -r 3, flash attention on), alternating
engines over a few rounds. Peak VRAM comes from the trial's own sampler (pynvml, per process)
and, at the same time, from ``nvidia-smi --query-gpu=memory.used -lms 200`` (the device's
used memory, less what it used just before the trial). Writes report.md and results.json.

GPU machine: source .gpu/device-setup.sh && python3 -m studies.llama_cpp_engines.run MODEL.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean
from typing import Any

from autotune.backends.base import TrialResult, Workload
from autotune.backends.llama_cpp.commands import format_command
from autotune.backends.llama_cpp.bench import LlamaBenchBackend, find_llama_bench
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.model_info import inspect_model

GIB = 2**30
HERE = Path(__file__).parent
HAS_SMI = shutil.which("nvidia-smi") is not None  # without it (a CPU dry run) its columns stay empty


class NvidiaSmi:
    """``nvidia-smi -lms`` in the background: the device's used memory (MiB) every interval."""

    def __init__(self, gpu_index: int, interval_ms: int = 200):
        self.command = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                        f"-lms={interval_ms}", f"--id={gpu_index}"]
        self.samples: list[int] = []

    def __enter__(self) -> "NvidiaSmi":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True) if HAS_SMI else None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout if self.process else []:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc: object) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait()
        self.reader.join()


def used_mib(gpu_index: int) -> int | None:
    if not HAS_SMI:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                          f"--id={gpu_index}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def gpu_name(gpu_index: int) -> str:
    if not HAS_SMI:
        return "no GPU"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader",
                          f"--id={gpu_index}"], capture_output=True, text=True).stdout.strip()
    return out or "no GPU"


def measure(backend: LlamaCppBackend, config: dict[str, Any], model: Path, workload: Workload,
            deadline_s: float, gpu_index: int) -> dict[str, Any]:
    idle = used_mib(gpu_index)
    time.sleep(0.5)
    with NvidiaSmi(gpu_index) as smi:
        result = backend.run_trial(config, model, workload, deadline_s)
        time.sleep(0.3)  # one more sample after the trial ended
    smi_peak = max(smi.samples, default=idle)
    return {
        "engine": backend.name,
        "result": result.to_json(),
        "smi_idle_mib": idle,
        "smi_peak_mib": smi_peak,
        "smi_peak_bytes": None if idle is None else (smi_peak - idle) * 2**20,
        "smi_samples": len(smi.samples),
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    samples = [s for row in rows for s in ((row["result"].get(key) or {}).get("samples") or [])]
    return fmean(samples) if samples else None


def _fmt_speed(rows: list[dict[str, Any]], key: str) -> str:
    results = [TrialResult.from_json(row["result"]) for row in rows]
    samples = [s for r in results if getattr(r, key) for s in getattr(r, key).samples]
    if not samples:
        return "-"
    std = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return f"{fmean(samples):.1f} ± {std:.1f} (n={len(samples)})"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def report(data: dict[str, Any]) -> str:
    lines = [
        "# llama_cpp and llama_bench engines, side by side",
        "",
        f"- machine: {data['machine']}",
        f"- model: {data['model']} ({data['model_name']}, {data['model_gib']:.2f} GiB of tensors, "
        f"fingerprint {data['fingerprint']})",
        f"- workload: -p {data['workload']['n_prompt']} -n {data['workload']['n_gen']} "
        f"-r {data['workload']['repetitions']}, {data['rounds']} round(s) per engine, alternating",
        f"- llama-bench: {data['llama_bench']}",
        f"- reproduce: `{data['command']}`",
        f"- date: {data['date']}",
        "",
        "| config | engine | decode tok/s | prefill tok/s | peak VRAM GiB (sampler) | peak VRAM GiB (nvidia-smi − idle) "
        "| predicted GiB | load s | outcomes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, entry in data["configs"].items():
        for engine in ("llama_cpp", "llama_bench"):
            rows = [row for row in entry["rows"] if row["engine"] == engine]
            peaks = [row["result"]["peak_vram_bytes"] for row in rows if row["result"]["peak_vram_bytes"]]
            smi = [row["smi_peak_bytes"] for row in rows if row["smi_peak_bytes"] is not None]
            loads = [row["result"]["load_seconds"] for row in rows]
            outcomes = ", ".join(row["result"]["outcome"] for row in rows)
            lines.append(
                f"| {label} | {engine} | {_fmt_speed(rows, 'decode_tps')} | {_fmt_speed(rows, 'prefill_tps')} "
                f"| {_gib(max(peaks) if peaks else None)} | {_gib(max(smi) if smi else None)} "
                f"| {_gib(entry['predicted_bytes'])} | {fmean(loads):.1f} | {outcomes} |"
            )
    lines += ["", "## Agreement", "",
              "| config | decode llama_cpp / llama_bench | prefill llama_cpp / llama_bench "
              "| VRAM sampler / nvidia-smi (llama_cpp) | VRAM sampler / nvidia-smi (llama_bench) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for label, entry in data["configs"].items():
        cells = []
        for key in ("decode_tps", "prefill_tps"):
            ours = _mean([r for r in entry["rows"] if r["engine"] == "llama_cpp"], key)
            bench = _mean([r for r in entry["rows"] if r["engine"] == "llama_bench"], key)
            cells.append(f"{ours / bench - 1:+.1%}" if ours and bench else "-")
        for engine in ("llama_cpp", "llama_bench"):
            pairs = [(r["result"]["peak_vram_bytes"], r["smi_peak_bytes"]) for r in entry["rows"]
                     if r["engine"] == engine and r["result"]["peak_vram_bytes"] and r["smi_peak_bytes"]]
            cells.append(f"{fmean(p / s for p, s in pairs) - 1:+.1%}" if pairs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Bars (issue 3): decode within 10% between engines; sampler peak within 5% of nvidia-smi "
              "for --n-cpu-moe 12.", "", "Launch commands measured:", ""]
    for label, entry in data["configs"].items():
        lines.append(f"- {label}: `{entry['llama_bench_command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, default=HERE, help="where report.md and results.json go")
    parser.add_argument("--n-cpu-moe", type=int, nargs="+", default=[0, 12])
    parser.add_argument("--rounds", type=int, default=2, help="trials per engine and config, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per trial stage")
    args = parser.parse_args(argv)

    profile = inspect_model(args.model)
    workload = Workload(n_prompt=512, n_gen=128, repetitions=3, n_ctx=640)  # llama-bench's context: p + n
    engines = [LlamaBenchBackend(gpu_index=args.gpu), LlamaCppBackend(gpu_index=args.gpu)]
    for engine in engines:
        if engine.available():
            sys.exit(f"{engine.name}: {engine.available()}")
    data: dict[str, Any] = {
        "machine": f"{gpu_name(args.gpu)}; {os.cpu_count()} CPUs; {platform.node()}",
        "model": str(args.model), "model_name": profile.name, "fingerprint": profile.fingerprint,
        "model_gib": profile.tensor_data_bytes / GIB, "workload": workload.__dict__, "rounds": args.rounds,
        "llama_bench": find_llama_bench(), "threads": args.threads,
        "command": "python3 -m studies.llama_cpp_engines.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "configs": {},
    }
    for n_cpu_moe in args.n_cpu_moe:
        config = {"n_gpu_layers": 99, "n_cpu_moe": n_cpu_moe, "flash_attn": True, "n_threads": args.threads,
                  "n_threads_batch": args.threads, "n_ctx": workload.n_ctx}
        label = "all on GPU (-ngl 99)" if n_cpu_moe == 0 else f"-ngl 99 --n-cpu-moe {n_cpu_moe}"
        entry = data["configs"][label] = {
            "config": config, "rows": [],
            "predicted_bytes": LlamaCppBackend().predict_vram(config, profile, workload),
            "llama_bench_command": format_command(config, args.model, "llama-bench"),
        }
        for round_ in range(args.rounds):
            for engine in engines if round_ % 2 == 0 else engines[::-1]:
                row = measure(engine, config, args.model, workload, args.deadline, args.gpu)
                entry["rows"].append(row)
                result = row["result"]
                print(f"{label} {engine.name} round {round_ + 1}: {result['outcome']} decode "
                      f"{(result['decode_tps'] or {}).get('mean', 0):.1f} tok/s, peak "
                      f"{_gib(result['peak_vram_bytes'])} GiB (nvidia-smi {_gib(row['smi_peak_bytes'])})", flush=True)
                if result["outcome"] != "ok":
                    print(result["message"][-2000:], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=1))
    (args.out / "report.md").write_text(report(data))
    print(report(data))


if __name__ == "__main__":
    main()

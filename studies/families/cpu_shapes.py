"""The runtime's CPU path against llama.cpp's CPU build on cuts of the real-shape presets.

For each (preset, layers, quant) it writes the synthetic file to /tmp (``autotune synth
--no-measure``), checks that ``autotune inspect`` reads it, decodes llama.cpp's greedy
tokens after the reference prompt (``tests/llama_cpp_reference``: STEPS steps) and runs the
runtime's torch path teacher-forced on them, prints the figures, and deletes the file.

The bars are ``tests/test_runtime_quants``'s: llama.cpp rounds activations to 8 bits, so each
step's logits must lie within 5e-2 of the largest, and the runtime's pick at most 1e-2 below
llama.cpp's best logit. Synthetic weights, so the figures check arithmetic, not quality.

Usage (project root): python -m studies.families.cpu_shapes [PRESET:LAYERS:QUANT ...]
(no arguments: every combination in COMBINATIONS).
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from autotune.cache_runtime.engine import Engine
from tests.llama_cpp_reference import llama_cpp_greedy, runtime_logits

LOGIT_BAR, PICK_BAR = 5e-2, 1e-2

# (preset, layers, quant): the fewest layers that keep one of routed experts
COMBINATIONS = [
    ("qwen3-30b-a3b", 1, "q4_k_m"),
    ("qwen3-30b-a3b", 1, "ud-q2_k_xl"),
    ("qwen3-30b-a3b", 1, "iq4_xs-mix"),
    ("qwen3-235b-a22b", 1, "q4_k_m"),
    ("mixtral-8x7b", 1, "q4_k_m"),
    ("glm-4.5-air", 2, "q4_k_m"),
    ("deepseek-v2-lite", 2, "q4_k_m"),
    ("deepseek-v2-lite", 2, "q4_0"),
    ("deepseek-v2-lite", 2, "iq4_xs"),
    ("qwen2-57b-a14b", 1, "q4_k_m"),
    ("qwen1.5-moe-a2.7b", 1, "q4_k_m"),
    ("gpt-oss-20b", 1, "q4_k_m"),
    ("gpt-oss-20b", 1, "mxfp4_moe"),
    ("gpt-oss-120b", 1, "q4_k_m"),
    ("gpt-oss-120b", 1, "mxfp4_moe"),
    # Q4_K_M's layer is 7.3 GB; Q2_K (its 128-wide no-RoPE rows IQ4_NL) keeps the cut near 4.5
    ("deepseek-v3", 1, "q2_k"),
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True)


def compare(preset: str, layers: int, quant: str) -> str:
    """One combination's line: file size, inspect, logit error, pick gap, tokens agreeing, seconds."""
    started = time.perf_counter()
    path = Path("/tmp") / f"cpu-shapes-{preset}-{layers}-{quant}.gguf"
    try:
        done = _cli("synth", str(path), "--preset", preset, "--layers", str(layers), "--quant", quant, "--no-measure")
        if done.returncode:
            return f"synth failed: {done.stderr.strip()[-400:]}"
        gib = path.stat().st_size / 2**30
        inspected = _cli("inspect", str(path))
        inspect = "ok" if inspected.returncode == 0 else f"FAILED: {inspected.stderr.strip()[-300:]}"
        want_tokens, want = llama_cpp_greedy(path)
        engine = Engine(path, device="cpu", kernels="torch", max_ctx=64)
        got = runtime_logits(engine, want_tokens)
        del engine
        largest = want.abs().amax(-1)
        err = float(((got - want).abs().amax(-1) / largest).max())
        gap = float(((want.amax(-1) - want.gather(1, got.argmax(-1, keepdim=True))[:, 0]) / largest).max())
        agree = int((got.argmax(-1) == torch.tensor(want_tokens)).sum())
        verdict = "ok" if err < LOGIT_BAR and gap < PICK_BAR else "MISMATCH"
        return (f"{gib:5.2f} GiB  inspect {inspect}  logit err {err:.2e}  pick gap {gap:.2e}  "
                f"agree {agree}/{len(want_tokens)}  {time.perf_counter() - started:5.0f} s  {verdict}")
    except Exception:  # noqa: BLE001 - a study: report the failure and go on to the next
        return "ERROR\n" + traceback.format_exc()[-2000:]
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    combinations = [(p, int(n), q) for p, n, q in (a.split(":") for a in argv)] if argv else COMBINATIONS
    for preset, layers, quant in combinations:
        print(f"{preset:18} {layers} {quant:11} {compare(preset, layers, quant)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

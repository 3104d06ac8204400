"""One family's bars from ``run.sh``'s files: logits agreement with llama.cpp at full
residency and at the cap, and full-residency decode against llama.cpp all on the GPU.

Usage (project root): python -m studies.families.summary OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from studies.hybrid.exactness import bar as logits_bar_met

DECODE_BAR = 0.85  # issue 28: full-residency decode >= 85% of llama.cpp all on the GPU


def _load(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def llama_decode_tps(runs: list | None) -> float | None:
    """llama-bench's tg128 average, or None where it did not run."""
    for run in runs or []:
        if not run.get("n_prompt") and run.get("n_gen"):
            return float(run["avg_ts"])
    return None


def summarize(out: Path) -> list[str]:
    lines = []
    runtime = _load(out / "runtime.json") or {}
    ours = (runtime.get("decode_tg128") or {}).get("median_tps")
    theirs = llama_decode_tps(_load(out / "llama_bench.json"))
    if ours and theirs:
        ratio = ours / theirs
        verdict = "met" if ratio >= DECODE_BAR else "not met"
        lines.append(f"decode tg128: runtime {ours:.1f} / llama.cpp {theirs:.1f} tok/s = {ratio:.0%} "
                     f"(bar >= {DECODE_BAR:.0%}: {verdict})")
    else:
        lines.append(f"decode tg128: runtime {ours}, llama.cpp {theirs}: not both measured")
    full = runtime.get("vs_llama_cpp") or {}
    exact = _load(out / "exactness.json") or {}
    for name, result in (("full residency vs llama.cpp", full), ("at the cap vs llama.cpp", exact.get("hybrid_vs_llama"))):
        if result and "cosine_min" in result:
            agree = result["steps"] - len(result["argmax_differs_at"])
            lines.append(f"{name}: cosine min {result['cosine_min']:.6f}, argmax {agree}/{result['steps']} "
                         f"(differs at {result['argmax_differs_at']}; "
                         f"bar: {'met' if logits_bar_met(result) else 'not met'})")
        else:
            lines.append(f"{name}: not measured ({(result or {}).get('error', 'no file')})")
    if exact:
        lines.append(f"at the cap: {exact.get('cpu_experts')} CPU experts, hit rate {exact.get('hit_rate')}")
    return lines


if __name__ == "__main__":
    print("\n".join(summarize(Path(sys.argv[1]))))

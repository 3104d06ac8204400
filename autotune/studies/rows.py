"""A measured config as results hold it (a "row"): small JSON with the pooled samples of its
measurements, its predicted and measured VRAM, and whether it fits a cap."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from autotune.backends.base import Backend, Config, Measurement, TrialResult, Workload
from autotune.search.objective import objective_samples


def measurement_json(samples: list[float]) -> dict[str, Any] | None:
    if not samples:
        return None
    measurement = Measurement.of(samples)
    return {"mean": measurement.mean, "std": measurement.std, "samples": measurement.samples}


def scalar_extras(results: list[TrialResult]) -> dict[str, Any]:
    """The scalar figures in the results' ``extra`` (hit rate, PCIe bytes per token, ...): numbers
    averaged over the results that carry them, other scalars from the first; nested values left out."""
    values: dict[str, list[Any]] = {}
    for result in results:
        for key, value in result.extra.items():
            if isinstance(value, (int, float, str, bool)):
                values.setdefault(key, []).append(value)
    return {key: statistics.fmean(v) if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) else v[0]
            for key, v in values.items()}


def pooled_row(config: Config, results: list[TrialResult], workload: Workload, predicted: int) -> dict[str, Any]:
    """One config's results (each from a fresh process), pooled. Its outcome is ``ok`` only when all were."""
    ok = [r for r in results if r.ok]
    failed = next((r for r in results if not r.ok), None)
    peaks = [r.peak_vram_bytes for r in results if r.peak_vram_bytes is not None]
    return {
        "config": config,
        "predicted_vram": predicted,
        "outcome": failed.outcome.value if failed else "ok",
        "message": (failed.message.strip().splitlines() or [""])[-1][:300] if failed else "",
        "peak_vram": max(peaks) if peaks else None,
        "decode": measurement_json([s for r in ok if r.decode_tps for s in r.decode_tps.samples]),
        "prefill": measurement_json([s for r in ok if r.prefill_tps for s in r.prefill_tps.samples]),
        "objective": measurement_json([s for r in ok for s in objective_samples(r, workload)]),
        "extra": scalar_extras(ok),
        "runs": len(results),
        "load_seconds": sum(r.load_seconds for r in results),
        "wall_seconds": sum(r.wall_seconds for r in results),
    }


def launch_command(backend: Backend, config: Config, model_path: Path) -> str:
    """The config's launch command, naming the model by its file name only."""
    return backend.launch_command(config, Path(model_path.name), backend.default_format)


def fits(row: dict[str, Any], cap: int) -> bool:
    """Measured ok within the cap (by its measured peak; by the prediction where none was measured)."""
    if row["outcome"] != "ok" or not row.get("objective"):
        return False
    used = row["peak_vram"] if row.get("peak_vram") is not None else row["predicted_vram"]
    return used <= cap


def objective_mean(row: dict[str, Any]) -> float:
    return row["objective"]["mean"] if row.get("objective") else 0.0

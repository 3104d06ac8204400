"""The number a study maximizes, from a trial's measurements, with its spread."""

from __future__ import annotations

import math

from autotune.backends.base import Measurement, TrialResult, Workload

OBJECTIVES = ("decode", "prefill", "request")
UNITS = {"decode": "tok/s", "prefill": "tok/s", "request": "req/s"}


def objective_samples(result: TrialResult, workload: Workload) -> list[float]:
    """Per-repetition objective values; empty for a failed trial.

    ``request`` is requests per second for a P-token prompt plus N generated tokens, so
    all three objectives are maximized.
    """
    if not result.ok:
        return []
    if workload.objective == "decode":
        return list(result.decode_tps.samples) if result.decode_tps else []
    if workload.objective == "prefill":
        return list(result.prefill_tps.samples) if result.prefill_tps else []
    if not (result.decode_tps and result.prefill_tps):
        return []
    pairs = zip(result.prefill_tps.samples, result.decode_tps.samples)
    return [1.0 / (workload.n_prompt / pp + workload.n_gen / tg) for pp, tg in pairs if pp > 0 and tg > 0]


def objective_of(result: TrialResult, workload: Workload) -> Measurement:
    return Measurement.of(objective_samples(result, workload))


def lower_bound(measurement: Measurement) -> float:
    """Mean less one standard error: how the winner is chosen among noisy candidates."""
    n = max(1, len(measurement.samples))
    return measurement.mean - measurement.std / math.sqrt(n)

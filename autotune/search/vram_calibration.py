"""VRAM prediction, calibrated by what this machine measured for the same model and backend.

Each backend predicts a config's peak VRAM from the model's byte groups (its own formula).
What that formula misses on a given machine (driver, CUDA context, allocator rounding) is
mostly a constant, so the calibrated prediction adds the median error of trials already
measured here; with none measured, the backend's formula stands alone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class MemoryCalibration:
    """Median (measured - predicted) of earlier trials, per backend."""

    residuals: dict[str, list[int]] = field(default_factory=dict)

    def add(self, backend: str, predicted_raw: int, measured: int) -> None:
        self.residuals.setdefault(backend, []).append(measured - predicted_raw)

    def correction(self, backend: str) -> int:
        values = self.residuals.get(backend)
        return int(statistics.median(values)) if values else 0

    def largest(self, backend: str) -> int:
        """The largest (measured - predicted) so far, 0 with none: the formula raised by it
        puts every config measured here at or above its measured peak."""
        values = self.residuals.get(backend)
        return max(values) if values else 0

    def predict(self, backend: str, predicted_raw: int) -> int:
        return predicted_raw + self.correction(backend)


def relative_error(predicted: int, measured: int) -> float:
    return (predicted - measured) / measured if measured else 0.0

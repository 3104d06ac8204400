"""Search strategies replayed on measured rows, as best-so-far curves against trials and time.

A row is one measured config: its value (the objective, 0 when it failed or broke the cap) and
the seconds its trial took. Random search is the rows in random orders (without repetition);
the exhaustive grid is the rows in their own order. Nothing here measures anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILES = (0.25, 0.75)  # the spread shown around random search's median


def best_so_far(values: list[float]) -> list[float]:
    return np.maximum.accumulate(np.asarray(values, dtype=float)).tolist()


@dataclass
class Curve:
    """Best value so far after each trial, and the seconds elapsed when each trial ended."""

    best: list[float]
    seconds: list[float]

    @classmethod
    def of(cls, values: list[float], seconds: list[float]) -> "Curve":
        """From each trial's value and the seconds each took."""
        return cls(best_so_far(values), np.cumsum(np.asarray(seconds, dtype=float)).tolist())

    def trials_to_reach(self, target: float) -> int | None:
        """Trials until the best so far reaches ``target`` (None: never)."""
        return next((i + 1 for i, best in enumerate(self.best) if best >= target), None)

    def seconds_to_reach(self, target: float) -> float | None:
        trials = self.trials_to_reach(target)
        return self.seconds[trials - 1] if trials is not None else None


@dataclass
class Band:
    """A median curve with its spread (``QUANTILES``) over many random orders."""

    x: list[float]
    median: list[float]
    low: list[float]
    high: list[float]


@dataclass
class RandomSearch:
    by_trials: Band  # x: 1 .. number of rows
    by_seconds: Band  # x: evenly spaced from 0 to the time of all rows
    trials_to_reach: list[int | None]  # per order, for the target it was run with
    seconds_to_reach: list[float | None]


def _band(x: np.ndarray, curves: np.ndarray) -> Band:
    low, median, high = np.quantile(curves, [QUANTILES[0], 0.5, QUANTILES[1]], axis=0)
    return Band(x.tolist(), median.tolist(), low.tolist(), high.tolist())


def best_at(curve: Curve, seconds: float) -> float:
    """The best value found by ``seconds`` (0 before the first trial ends)."""
    done = int(np.searchsorted(curve.seconds, seconds, side="right"))
    return curve.best[done - 1] if done else 0.0


def random_search(values: list[float], seconds: list[float], target: float, orders: int = 200, seed: int = 0,
                  points: int = 100) -> RandomSearch:
    """Random search over the rows: ``orders`` random orders, each a best-so-far curve; the
    median and spread per trial and per moment, and each order's trials and seconds to ``target``."""
    if not values:
        raise ValueError("random search needs at least one row")
    rng = np.random.default_rng(seed)
    values_a, seconds_a = np.asarray(values, dtype=float), np.asarray(seconds, dtype=float)
    curves = [Curve.of(values_a[order].tolist(), seconds_a[order].tolist())
              for order in (rng.permutation(len(values)) for _ in range(orders))]
    times = np.linspace(0.0, float(seconds_a.sum()), points)
    by_time = np.array([[best_at(curve, t) for t in times] for curve in curves])
    return RandomSearch(
        by_trials=_band(np.arange(1, len(values) + 1), np.array([curve.best for curve in curves])),
        by_seconds=_band(times, by_time),
        trials_to_reach=[curve.trials_to_reach(target) for curve in curves],
        seconds_to_reach=[curve.seconds_to_reach(target) for curve in curves],
    )


def median_and_spread(samples: list[float | None]) -> tuple[float, float, float] | None:
    """Median and ``QUANTILES`` of the samples, a never-reached (None) counting as the largest;
    None when the median itself was never reached."""
    if not samples:
        return None
    ranked = np.array([np.inf if s is None else s for s in samples], dtype=float)
    low, median, high = np.quantile(ranked, [QUANTILES[0], 0.5, QUANTILES[1]], method="lower")
    return None if np.isinf(median) else (float(median), float(low), float(high))

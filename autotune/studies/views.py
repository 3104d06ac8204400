"""What each figure and table of a report shows, computed from a study's results/ alone:
throughput points per cap, convergence curves per cap, and the cache backend's figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError
from autotune.studies.definition import StudyDefinition, load_definition
from autotune.studies.plan import Part, Variant, plan, variants
from autotune.studies.rows import fits, objective_mean
from autotune.studies.simulate import Curve, RandomSearch, best_so_far, random_search

BASELINE_LABELS = {"all_cpu": "all experts on CPU", "best_n_cpu_moe": "best --n-cpu-moe", "all_gpu": "all on GPU"}
GRID_LABEL = "grid's best"
TARGET_SHARE = 0.95  # convergence: trials and minutes until the best so far is this share of the grid's best
RANDOM_ORDERS = 200
HIT_RATE, PCIE_BYTES = "hit_rate", "pcie_bytes_per_token"  # keys of a cache backend's TrialResult.extra


@dataclass
class StudyResults:
    definition: StudyDefinition
    records: dict[str, dict[str, Any]]  # by part name
    missing: list[str]  # parts of the definition without a result

    def parts(self, variant: Variant, kind: str) -> list[tuple[Part, dict[str, Any]]]:
        return [(p, self.records[p.name]) for p in plan(self.definition)
                if p.variant == variant and p.kind == kind and p.name in self.records]

    def variants(self) -> list[Variant]:
        return [v for v in variants(self.definition) if any(p.variant == v and p.name in self.records
                                                            for p in plan(self.definition))]


def load_results(directory: Path) -> StudyResults:
    definition = load_definition(directory)
    records = {}
    for path in sorted(definition.results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AutotuneError(f"{path}: not valid JSON ({exc})") from None
        records[record["part"]] = record
    if not records:
        raise AutotuneError(f"{definition.results_dir}: no results yet (run: autotune study run {directory})")
    return StudyResults(definition, records, [p.name for p in plan(definition) if p.name not in records])


def _figure(measurement: dict[str, Any] | None) -> tuple[float, float] | None:
    return (measurement["mean"], measurement["std"]) if measurement else None


@dataclass
class Point:
    """One series at one cap: a measured config, or (decode None) why there is none."""

    series: str
    cap: int
    decode: tuple[float, float] | None = None
    prefill: tuple[float, float] | None = None
    peak_vram: int | None = None
    predicted_vram: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    why: str = ""


def _point(series: str, cap: int, row: dict[str, Any]) -> Point:
    return Point(series, cap, _figure(row.get("decode")), _figure(row.get("prefill")), row.get("peak_vram"),
                 row.get("predicted_vram"), row["config"])


def grid_rows(results: StudyResults, variant: Variant) -> tuple[Part, dict[str, Any]] | None:
    found = results.parts(variant, "grid")
    return found[0] if found else None


def speed_points(results: StudyResults, variant: Variant) -> list[Point]:
    """Each tuner's winner, the grid's best that fits, and each baseline, at every cap with results."""
    points: list[Point] = []
    for part, record in results.parts(variant, "tuner"):
        series = f"{part.backend} (tuner)"
        winner = record.get("winner")
        points.append(_point(series, part.cap, winner) if winner else
                      Point(series, part.cap, why=record.get("error") or "no trial succeeded"))
    grid = grid_rows(results, variant)
    if grid is not None:
        for cap in results.definition.caps:
            fitting = [r for r in grid[1]["rows"] if r["outcome"] != "skipped" and fits(r, cap)]
            best = max(fitting, key=objective_mean, default=None)
            points.append(_point(GRID_LABEL, cap, best) if best else Point(GRID_LABEL, cap, why="no grid config fits"))
    for part, record in results.parts(variant, "baselines"):
        for name, pick in record["baselines"].items():
            label = BASELINE_LABELS[name]
            points.append(_point(label, part.cap, record["rows"][pick["row"]]) if pick["row"] is not None
                          else Point(label, part.cap, why=pick["why"]))
    order = {name: i for i, name in enumerate([f"{b} (tuner)" for b in results.definition.backends]
                                              + [GRID_LABEL, *BASELINE_LABELS.values()])}
    return sorted(points, key=lambda p: (p.cap, order[p.series]))


@dataclass
class Convergence:
    """At one cap: the grid's rows as random search and in grid order, and the tuners' trials."""

    cap: int
    rows: int  # grid configs predicted within the cap (those a search under the cap would run)
    grid_best: float
    grid: Curve
    random: RandomSearch
    tuners: dict[str, Curve]

    @property
    def target(self) -> float:
        return TARGET_SHARE * self.grid_best


def _tuner_curve(record: dict[str, Any], cap: int) -> Curve:
    """Best so far over the measured trials (pruned ones were never run), against the study's clock."""
    measured = [t for t in record["trials"] if t["outcome"] not in ("pruned", "stopped") and t.get("elapsed_s") is not None]
    values = [objective_mean(t) if fits(t, cap) else 0.0 for t in measured]
    return Curve(best_so_far(values), [t["elapsed_s"] for t in measured])


def convergence(results: StudyResults, variant: Variant, orders: int = RANDOM_ORDERS) -> list[Convergence]:
    """Per cap with grid rows that fit: the curves. Tuners of the grid's backend are compared (all
    tuners when none of them is the grid's backend)."""
    grid = grid_rows(results, variant)
    if grid is None:
        return []
    tuners = results.parts(variant, "tuner")
    same = [(p, r) for p, r in tuners if p.backend == grid[0].backend]
    out = []
    for cap in results.definition.caps:
        rows = [r for r in grid[1]["rows"] if r["outcome"] != "skipped" and r["predicted_vram"] <= cap]
        values = [objective_mean(r) if fits(r, cap) else 0.0 for r in rows]
        if not values or max(values) <= 0:
            continue
        seconds = [r["seconds"] for r in rows]
        curves = {p.backend: _tuner_curve(r, cap) for p, r in (same or tuners) if p.cap == cap and r.get("trials")}
        out.append(Convergence(cap, len(rows), max(values), Curve.of(values, seconds),
                               random_search(values, seconds, TARGET_SHARE * max(values), orders=orders), curves))
    return out


@dataclass
class CachePoint:
    variant: str
    backend: str
    cap: int
    hit_rate: float | None
    pcie_bytes_per_token: float | None
    decode: tuple[float, float] | None


def cache_points(results: StudyResults) -> list[CachePoint]:
    """The tuner winners whose results carry a hit rate or PCIe bytes per token (the cache
    backend's), per variant by increasing cap (a study may run its caps in another order)."""
    points = []
    for variant in results.variants():
        for part, record in sorted(results.parts(variant, "tuner"), key=lambda pr: pr[0].cap):
            extra = (record.get("winner") or {}).get("extra", {})
            if HIT_RATE in extra or PCIE_BYTES in extra:
                points.append(CachePoint(variant.name, part.backend, part.cap, extra.get(HIT_RATE), extra.get(PCIE_BYTES),
                                         _figure(record["winner"].get("decode"))))
    return points

"""The report's markdown tables, one for each figure, from the views."""

from __future__ import annotations

import json
from typing import Any

from autotune.studies.plan import cap_label
from autotune.studies.simulate import median_and_spread
from autotune.studies.views import TARGET_SHARE, CachePoint, Convergence, Point

DASH = "—"


def markdown_table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A GitHub markdown table; columns in ``right`` are right-aligned (figures)."""
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    rule = ["---:" if i in right else "---" for i in range(len(headers))]
    return "\n".join([cells(headers), cells(rule)] + [cells(row) for row in rows])


def mean_std(figure: tuple[float, float] | None) -> str:
    return f"{figure[0]:.1f} ± {figure[1]:.1f}" if figure else DASH


def gib(n_bytes: float | None) -> str:
    return f"{n_bytes / 2**30:.2f}" if n_bytes is not None else DASH


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def knob_texts(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The knobs with one value in every config that sets them (more than one does, unless there
    is one config), and each config's other knobs as ``k=v`` text (configs of different
    backends, or with defaults left out, set different keys)."""
    values: dict[str, list[Any]] = {}
    for config in configs:
        for key, value in config.items():
            values.setdefault(key, []).append(value)
    common = {k: v[0] for k, v in sorted(values.items())
              if all(x == v[0] for x in v) and (len(v) > 1 or len(configs) == 1)}
    return common, [" ".join(f"{k}={_value(v)}" for k, v in c.items() if k not in common) for c in configs]


def speed_table(points: list[Point]) -> str:
    measured = [p for p in points if p.decode or p.prefill]
    common, texts = knob_texts([p.config for p in measured])
    text_of = {id(p): t for p, t in zip(measured, texts)}
    rows = [[cap_label(p.cap), p.series, mean_std(p.decode), mean_std(p.prefill), gib(p.peak_vram), gib(p.predicted_vram),
             (f"`{text_of[id(p)]}`" if text_of[id(p)] else "") if id(p) in text_of else p.why]
            for p in points]
    table = markdown_table(["cap", "series", "decode tok/s", "prefill tok/s", "peak VRAM GiB", "predicted GiB", "config"],
                           rows, right={2, 3, 4, 5})
    if common:
        table += "\n\nKnobs with one value in every row that sets them: `" + " ".join(f"{k}={_value(v)}" for k, v in common.items()) + "`"
    return table


def _trials(reached: int | None) -> str:
    return str(reached) if reached is not None else "not reached"


def _minutes(seconds: float | None) -> str:
    return f"{seconds / 60:.1f}" if seconds is not None else "not reached"


def _spread(samples: list[Any], scale: float = 1.0, digits: int = 0) -> str:
    summary = median_and_spread(samples)
    if summary is None:
        return "not reached"
    median, low, high = (v / scale for v in summary)
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def convergence_table(curves: list[Convergence], unit: str) -> str:
    """Per cap and tuner: the grid's best, the tuner's best, and the trials and minutes each
    strategy needed to reach ``TARGET_SHARE`` of the grid's best (random search: median [quartiles])."""
    share = f"{TARGET_SHARE:.0%}"
    rows = []
    for c in curves:
        random_trials = _spread(c.random.trials_to_reach)
        random_minutes = _spread(c.random.seconds_to_reach, scale=60, digits=1)
        for backend, curve in (c.tuners.items() or [(DASH, None)]):
            best = curve.best[-1] if curve and curve.best else None
            rows.append([
                cap_label(c.cap), str(c.rows), f"{c.grid_best:.1f}", backend,
                f"{best:.1f} ({best / c.grid_best:.2f})" if best is not None else DASH,
                f"{len(curve.best)} / {curve.seconds[-1] / 60:.1f}" if curve and curve.best else DASH,
                _trials(curve.trials_to_reach(c.target)) if curve else DASH, random_trials,
                _trials(c.grid.trials_to_reach(c.target)),
                _minutes(curve.seconds_to_reach(c.target)) if curve else DASH, random_minutes,
                _minutes(c.grid.seconds_to_reach(c.target)),
            ])
    headers = ["cap", "grid configs", f"grid's best {unit}", "tuner", "tuner's best (share)", "tuner trials / min",
               f"trials to {share}: tuner", "random", "grid order", f"minutes to {share}: tuner", "random", "grid order"]
    return markdown_table(headers, rows, right=set(range(1, 12)) - {3})


def cache_table(points: list[CachePoint]) -> str:
    rows = [[p.variant, cap_label(p.cap), p.backend, f"{p.hit_rate:.3f}" if p.hit_rate is not None else DASH,
             f"{p.pcie_bytes_per_token / 2**20:.2f}" if p.pcie_bytes_per_token is not None else DASH, mean_std(p.decode)]
            for p in points]
    return markdown_table(["variant", "cap", "backend", "hit rate", "PCIe MiB/token", "decode tok/s"], rows, right={3, 4, 5})

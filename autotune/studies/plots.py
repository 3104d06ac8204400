"""The report's PNG figures (matplotlib, Agg canvas; no pyplot state). Every figure carries a
small footer naming the machine, the model, the caps and the reproducing command."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from autotune.studies.plan import cap_label
from autotune.studies.views import RANDOM_ORDERS, CachePoint, Convergence, Point

MARKERS = "osD^v<>ph*"
DPI = 120


def _new(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, footer: str, path: Path) -> Path:
    figure.supxlabel("\n".join(textwrap.wrap(footer, 200)), fontsize=6, color="0.35", x=0.005, ha="left")
    figure.savefig(path, dpi=DPI)
    return path


def _caps_axis(ax, caps: list[int]) -> None:
    ax.set_xticks([c / 2**30 for c in caps], [cap_label(c) for c in caps])
    ax.set_xlabel("VRAM cap")
    ax.grid(alpha=0.3)


def speed_figure(points: list[Point], caps: list[int], title: str, footer: str, path: Path) -> Path:
    """Decode and prefill tok/s against the cap: a line per series, error bars one standard deviation."""
    figure = _new(11, 4.8)
    series = list(dict.fromkeys(p.series for p in points))
    for ax, attr in zip(figure.subplots(1, 2), ("decode", "prefill")):
        for i, name in enumerate(series):
            shown = [p for p in points if p.series == name and getattr(p, attr)]
            if shown:
                ax.errorbar([p.cap / 2**30 for p in shown], [getattr(p, attr)[0] for p in shown],
                            yerr=[getattr(p, attr)[1] for p in shown], marker=MARKERS[i % len(MARKERS)], capsize=3,
                            linestyle="-" if name.endswith("(tuner)") else "--", label=name)
        _caps_axis(ax, caps)
        ax.set_ylabel(f"{attr} tok/s")
        ax.set_ylim(bottom=0)
        ax.set_title(attr)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, footer, path)


def convergence_figure(curves: list[Convergence], unit: str, title: str, footer: str, path: Path) -> Path:
    """Best so far against trials (left) and minutes (right), a row per cap: random search (median
    and quartiles over random orders of the grid's rows), the grid in its order, and the tuner."""
    figure = _new(11, 1.2 + 3.0 * len(curves))
    axes = figure.subplots(len(curves), 2, squeeze=False)
    for row, c in zip(axes, curves):
        for ax, band, scale in ((row[0], c.random.by_trials, 1.0), (row[1], c.random.by_seconds, 60.0)):
            x = [v / scale for v in band.x]
            ax.fill_between(x, band.low, band.high, step="post", alpha=0.25, color="C0", label="random search, quartiles")
            ax.step(x, band.median, where="post", color="C0", label=f"random search, median of {RANDOM_ORDERS} orders")
        row[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        grid_x = (list(range(1, len(c.grid.best) + 1)), [s / 60 for s in c.grid.seconds])
        for ax, x in zip(row, grid_x):
            ax.step(x, c.grid.best, where="post", color="C1", label="exhaustive grid, in its order")
        for i, (backend, curve) in enumerate(c.tuners.items()):
            tuner_x = (list(range(1, len(curve.best) + 1)), [s / 60 for s in curve.seconds])
            for ax, x in zip(row, tuner_x):
                ax.step(x, curve.best, where="post", color=f"C{2 + i}", marker=".", label=f"{backend} tuner")
        for ax, xlabel in zip(row, ("trials", "minutes")):
            ax.axhline(c.grid_best, color="0.5", linestyle=":", label="grid's best")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"best so far ({unit})")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"cap {cap_label(c.cap)}: best so far against {xlabel}", fontsize=9)
        row[0].legend(fontsize=7, loc="lower right")
    figure.suptitle(title)
    return _save(figure, footer, path)


def cache_figure(points: list[CachePoint], caps: list[int], title: str, footer: str, path: Path) -> Path:
    """Hit rate and PCIe bytes per token against the cap, a line per variant and backend."""
    figure = _new(11, 4.5)
    lines = list(dict.fromkeys((p.variant, p.backend) for p in points))
    for ax, attr, label, scale in zip(figure.subplots(1, 2), ("hit_rate", "pcie_bytes_per_token"),
                                      ("hit rate", "PCIe MiB per token"), (1.0, 2**20)):
        for i, (variant, backend) in enumerate(lines):
            shown = [p for p in points if (p.variant, p.backend) == (variant, backend) and getattr(p, attr) is not None]
            if shown:
                ax.plot([p.cap / 2**30 for p in shown], [getattr(p, attr) / scale for p in shown],
                        marker=MARKERS[i % len(MARKERS)], label=f"{backend}, {variant}")
        _caps_axis(ax, caps)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.0) if attr == "hit_rate" else ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, footer, path)

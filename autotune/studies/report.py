"""``autotune report``: a study's ``report.md`` and PNG figures, from its results/ alone.

Per model variant: throughput against the cap (each backend's tuner winner, the grid's best,
the baselines) and the tuner's convergence next to random search and the exhaustive grid on the
grid's rows; for backends whose results carry them, hit rate and PCIe bytes per token.
Every figure and caption names the machine, the model, the caps and the reproducing command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.search.objective import UNITS
from autotune.studies.plan import Variant, cap_label
from autotune.studies.plots import cache_figure, convergence_figure, speed_figure
from autotune.studies.tables import cache_table, convergence_table, speed_table
from autotune.studies.views import RANDOM_ORDERS, TARGET_SHARE, StudyResults, cache_points, convergence, load_results, speed_points

REPORT_FILE = "report.md"


def _model_text(model: dict[str, Any]) -> str:
    size = f"{model['file_bytes'] / 2**30:.2f} GiB"
    if model.get("preset"):
        return (f"{model['preset']} synthetic preset ({model['quant']}, skew {model['skew']:g}, seed {model['seed']}, {size}, "
                f"fingerprint {model['fingerprint']})")
    return f"{model['file']} ({size}, fingerprint {model['fingerprint']})"


def _variant_model(results: StudyResults, variant: Variant) -> dict[str, Any]:
    return next(r["model"] for r in results.records.values() if r["variant"] == variant.name)


def _machines(results: StudyResults) -> str:
    machines = {r["machine"]["fingerprint"]: r["machine"]["description"] for r in results.records.values()}
    return "; ".join(f"{description} (hardware fingerprint {fingerprint})" for fingerprint, description in machines.items())


def _setup(results: StudyResults, command: str) -> list[str]:
    d = results.definition
    w, t = d.workload, d.tuner
    budget = " and ".join(x for x in (f"{t.trials} measured trials" if t.trials else "",
                                      f"{t.minutes:g} minutes" if t.minutes is not None else "") if x)
    commits = sorted({r["autotune_commit"] for r in results.records.values() if r.get("autotune_commit")})
    lines = [
        f"- Machine: {_machines(results)}",
        f"- Workload: objective {w.objective}; {w.n_prompt} prompt and {w.n_gen} generated tokens, "
        f"{w.repetitions} repetitions per trial, context {w.n_ctx}",
        f"- Caps: {', '.join(cap_label(c) for c in d.caps)}; backends tuned: {', '.join(d.backends)}, "
        f"each with `autotune run` ({budget}, sampler {t.sampler}, seed {t.seed}); the exact command of each "
        "tuner part is in its `results/<part>.json`",
        f"- Reproduce: `{command}`",
    ]
    measured_by = {*d.backends, *(part.backend for part in (d.baselines, d.grid) if part is not None)}
    lines.append("- Peak VRAM: the trial process's, sampled by NVML, at the context the exported command serves"
                 + ("; llama-bench holds only each test's tokens, so a llama_bench peak is the measured one plus the "
                    "memory model's KV cache and buffers for the rest of that context" if "llama_bench" in measured_by
                    else ""))
    if d.baselines is not None:
        lines.append(f"- Baselines ({d.baselines.backend}): each config measured {d.baselines.repeats} time(s), each in a "
                     f"fresh process; best --n-cpu-moe: the fastest of {d.baselines.n_cpu_moe_span} values from one "
                     "below the smallest predicted to fit that measured within the cap")
    if d.grid is not None:
        axes = "; ".join(f"{k} ∈ {v}" for k, v in d.grid.axes.items())
        lines.append(f"- Exhaustive grid ({d.grid.backend}), once per model: {axes}; fixed {d.grid.fixed or 'nothing'}")
    if commits:
        lines.append(f"- Code: commit {', '.join(commits)}")
    if results.missing:
        lines.append(f"- Not run yet ({len(results.missing)} part(s)): {', '.join(results.missing)}")
    errors = [f"{name}: {r['error']}" for name, r in results.records.items() if r.get("error")]
    if errors:
        lines.append("- Parts that ended in an error (delete their file in results/ to run them again): "
                     + "; ".join(errors))
    return lines


def write_report(directory: Path) -> list[Path]:
    """Writes the figures and report.md into the study directory; returns their paths."""
    results = load_results(directory)
    d = results.definition
    unit = UNITS[d.workload.objective]
    command = f"autotune study run studies/{d.name} && autotune report studies/{d.name}"
    caps = ", ".join(cap_label(c) for c in d.caps)
    lines = [f"# Study: {d.name}", ""] + ([d.description, ""] if d.description else []) + _setup(results, command) + [""]
    written: list[Path] = []
    number = 0

    def figure(path: Path, heading: str, caption: str, table: str) -> None:
        nonlocal number
        number += 1
        written.append(path)
        lines.extend([f"## {heading}", "", f"![Figure {number}]({path.name})", "", f"*Figure {number}: {caption}*", "",
                      table, ""])

    for variant in results.variants():
        model = _model_text(_variant_model(results, variant))
        names = f"Machine: {_machines(results)}. Model: {model}. Caps: {caps}. Reproduce: `{command}`."
        footer = f"machine: {_machines(results)} · model: {model} · caps: {caps} · reproduce: {command}"
        about = f" ({variant.name})" if variant.skew is not None else ""
        points = speed_points(results, variant)
        if any(p.decode or p.prefill for p in points):
            path = speed_figure(points, list(d.caps), f"Throughput against the VRAM cap{about}", footer,
                                d.directory / f"speed-{variant.name}.png")
            figure(path, f"Throughput against the VRAM cap{about}",
                   "decode and prefill tok/s of each backend's tuner winner (all its samples, the race's included), "
                   "the grid's best config that fits the cap, and the baselines; error bars: one standard deviation. "
                   + names, speed_table(points))
        curves = convergence(results, variant)
        if curves:
            path = convergence_figure(curves, unit, f"Tuner convergence{about}", footer,
                                      d.directory / f"convergence-{variant.name}.png")
            figure(path, f"Tuner convergence{about}",
                   f"the best {d.workload.objective} {unit} so far against measured trials and minutes: the tuner, "
                   f"random search (the grid's rows predicted within the cap in {RANDOM_ORDERS} random orders: median "
                   "and quartiles) and the exhaustive grid in its own order, both replayed from the grid's "
                   f"measurements. Table: trials and minutes until the best so far reached {TARGET_SHARE:.0%} of the "
                   "grid's best (random search: median [quartiles]). " + names, convergence_table(curves, unit))
    cache = cache_points(results)
    if cache:
        models = "; ".join(_model_text(_variant_model(results, v)) for v in results.variants())
        footer = f"machine: {_machines(results)} · model: {models} · caps: {caps} · reproduce: {command}"
        path = cache_figure(cache, list(d.caps), "Expert cache: hit rate and PCIe traffic", footer,
                            d.directory / "cache.png")
        figure(path, "Expert cache: hit rate and PCIe traffic",
               "hit rate and PCIe bytes per decoded token of each tuner winner that reports them, against the cap. "
               f"Machine: {_machines(results)}. Model: {models}. Caps: {caps}. Reproduce: `{command}`.",
               cache_table(cache))
    report = d.directory / REPORT_FILE
    report.write_text("\n".join(lines).rstrip() + "\n")
    return [report, *written]

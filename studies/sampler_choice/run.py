"""Choose the tuner's sampler by replaying recorded trial data.

The reference grid measured on the GPU machine (studies/tuner_vs_grid/grid.json: decode
tok/s with repetitions and peak VRAM for n_cpu_moe x threads x ubatch x flash attention)
becomes the objective: a sampler proposes a config, gets one of its recorded samples back
(so the noise is real), and configs over the cap are pruned as the tuner prunes them.
Between measured n_cpu_moe values, speed and VRAM are interpolated linearly.
Each sampler runs many seeded 20-trial studies per cap; the report gives how close the
best config found (by its true mean) comes to the grid's best, and how often it reaches 97%.

Usage: python studies/sampler_choice/run.py studies/tuner_vs_grid/grid.json studies/sampler_choice
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from autotune.search.samplers import make_sampler

SAMPLERS = ("tpe", "tpe-independent", "gp", "random")
CAPS_GIB = (16, 12)
SEEDS = range(20)
TRIALS = 20
MAX_ASKS = 200


class RecordedSurface:
    """Decode speed (mean and samples) and peak VRAM per config, from the grid."""

    def __init__(self, rows: list[dict]):
        self.by_key: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            self.by_key[(row["n_threads"], row["n_ubatch"], row["flash_attn"])].append(row)
        for series in self.by_key.values():
            series.sort(key=lambda r: r["n_cpu_moe"])
        self.n_cpu_moe = sorted({r["n_cpu_moe"] for r in rows})

    def _interpolate(self, config: dict, field: str) -> float:
        series = self.by_key[(config["n_threads"], config["n_ubatch"], config["flash_attn"])]
        xs = [r["n_cpu_moe"] for r in series]
        return float(np.interp(config["n_cpu_moe"], xs, [r[field] for r in series]))

    def mean(self, config: dict) -> float:
        return self._interpolate(config, "decode_tps")

    def vram_mib(self, config: dict) -> float:
        return self._interpolate(config, "peak_vram_mib")

    def observe(self, config: dict, rng: np.random.Generator) -> float:
        """One noisy measurement: the mean scaled by a recorded sample's relative deviation."""
        series = self.by_key[(config["n_threads"], config["n_ubatch"], config["flash_attn"])]
        nearest = min(series, key=lambda r: abs(r["n_cpu_moe"] - config["n_cpu_moe"]))
        samples = nearest["samples"] or [nearest["decode_tps"]]
        return self.mean(config) * rng.choice(samples) / nearest["decode_tps"]

    def configs(self):
        for (threads, ubatch, fa) in self.by_key:
            for n in range(self.n_cpu_moe[0], self.n_cpu_moe[-1] + 1):
                yield {"n_cpu_moe": n, "n_threads": threads, "n_ubatch": ubatch, "flash_attn": fa}


def _suggest(trial: optuna.Trial, surface: RecordedSurface) -> dict:
    return {
        "n_cpu_moe": trial.suggest_int("n_cpu_moe", surface.n_cpu_moe[0], surface.n_cpu_moe[-1]),
        "n_threads": trial.suggest_categorical("n_threads", sorted({k[0] for k in surface.by_key})),
        "n_ubatch": trial.suggest_categorical("n_ubatch", sorted({k[1] for k in surface.by_key})),
        "flash_attn": trial.suggest_categorical("flash_attn", sorted({k[2] for k in surface.by_key})),
    }


def replay(surface: RecordedSurface, sampler_name: str, cap_mib: float, seed: int) -> list[float]:
    """True mean of the best-so-far config (best by observed value) after each measured trial."""
    rng = np.random.default_rng(seed)
    sampler = make_sampler(sampler_name, seed=seed, constraints_func=lambda t: [t.user_attrs.get("constraint", 1.0)])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best_observed, best_true, curve = -1.0, 0.0, []
    for _ in range(MAX_ASKS):
        if len(curve) >= TRIALS:
            break
        trial = study.ask()
        config = _suggest(trial, surface)
        if surface.vram_mib(config) > cap_mib:
            trial.set_user_attr("constraint", 1.0)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        observed = surface.observe(config, rng)
        trial.set_user_attr("constraint", surface.vram_mib(config) - cap_mib)
        study.tell(trial, observed)
        if observed > best_observed:
            best_observed, best_true = observed, surface.mean(config)
        curve.append(best_true)
    return curve


def main(grid_path: str, out_dir: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    surface = RecordedSurface(json.loads(Path(grid_path).read_text())["rows"])
    lines = [
        "# Sampler choice, replayed on recorded GPU data",
        "",
        f"Data: `{grid_path}` (llama-bench on the GPU machine, H100 80GB, qwen3-30b-a3b synthetic preset;",
        "decode tg64, 2 repetitions per config). Each cell: mean over "
        f"{len(SEEDS)} seeded studies of {TRIALS} measured trials (pruned configs are free, as in the tuner).",
        "",
        "| cap | sampler | best found / grid best (mean) | worst seed | studies reaching 97% |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    summary = {}
    for cap in CAPS_GIB:
        cap_mib = cap * 1024
        grid_best = max(surface.mean(c) for c in surface.configs() if surface.vram_mib(c) <= cap_mib)
        for name in SAMPLERS:
            finals = [replay(surface, name, cap_mib, seed)[-1] / grid_best for seed in SEEDS]
            reach = sum(f >= 0.97 for f in finals) / len(finals)
            summary[(cap, name)] = (statistics.fmean(finals), min(finals), reach)
            lines.append(f"| {cap} GiB | {name} | {100 * statistics.fmean(finals):.1f}% | {100 * min(finals):.1f}% | {100 * reach:.0f}% |")
            print(lines[-1], flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({f"{c}:{n}": v for (c, n), v in summary.items()}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

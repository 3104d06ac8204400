"""The report's arithmetic and tables, from hand-made results (nothing measured): the random-search
replay, the convergence and throughput tables, and the cache figure for results that carry it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotune.studies.report import write_report
from autotune.studies.simulate import Curve, best_at, median_and_spread, random_search
from autotune.studies.tables import convergence_table, knob_texts, markdown_table, speed_table
from autotune.studies.views import Point, cache_points, convergence, load_results

GIB = 2**30


def test_curve_best_so_far_and_when_a_target_is_reached():
    curve = Curve.of([3.0, 1.0, 5.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    assert curve.best == [3.0, 3.0, 5.0, 5.0] and curve.seconds == [10.0, 30.0, 60.0, 100.0]
    assert curve.trials_to_reach(4.0) == 3 and curve.seconds_to_reach(4.0) == 60.0
    assert curve.trials_to_reach(6.0) is None and curve.seconds_to_reach(6.0) is None
    assert best_at(curve, 5.0) == 0.0 and best_at(curve, 30.0) == 3.0 and best_at(curve, 1e9) == 5.0


def test_random_search_matches_the_chance_of_drawing_the_best_row():
    """With n distinct rows, the best is among the first k of a random order with chance k/n."""
    values = [float(v) for v in range(1, 11)]
    search = random_search(values, [1.0] * 10, target=10.0, orders=2000, seed=1)
    reached = np.array(search.trials_to_reach)
    for k in (1, 3, 5, 8):
        assert abs(np.mean(reached <= k) - k / 10) < 0.04
    assert search.by_trials.x == list(range(1, 11))
    assert search.by_trials.median[-1] == search.by_trials.low[-1] == 10.0  # every order ends at the best
    assert all(a <= b for a, b in zip(search.by_trials.median, search.by_trials.median[1:]))
    assert all(lo <= m <= hi for lo, m, hi in zip(search.by_trials.low, search.by_trials.median, search.by_trials.high))
    assert search.by_seconds.x[-1] == 10.0 and search.by_seconds.median[0] == 0.0  # nothing ends at time 0
    assert search.seconds_to_reach == [float(t) for t in search.trials_to_reach]  # every row takes 1 s
    again = random_search(values, [1.0] * 10, target=10.0, orders=2000, seed=1)
    assert again.trials_to_reach == search.trials_to_reach


def test_median_and_spread_counts_never_reached_as_the_largest():
    assert median_and_spread([1, 2, 3, 4, None]) == (3.0, 2.0, 4.0)
    assert median_and_spread([1, None, None]) is None
    assert median_and_spread([]) is None


def test_markdown_table_and_knob_texts():
    assert markdown_table(["a", "b"], [["x|y", "1"]], right={1}) == "| a | b |\n| --- | ---: |\n| x\\|y | 1 |"
    common, texts = knob_texts([{"n_cpu_moe": 9, "t": 16, "fa": True}, {"n_cpu_moe": 20, "t": 16}, {"slots": 3}])
    assert common == {"t": 16}  # a knob only one config sets stays in its row
    assert texts == ["n_cpu_moe=9 fa=true", "n_cpu_moe=20", "slots=3"]


def test_speed_table_shows_figures_and_why_a_point_is_missing():
    points = [Point("llama_bench (tuner)", 16 * GIB, (136.3, 4.1), (900.0, 12.0), int(15.2 * GIB), int(15.1 * GIB),
                    {"n_cpu_moe": 9, "n_threads": 16}),
              Point("all experts on CPU", 16 * GIB, (40.0, 0.5), None, None, int(4 * GIB), {"n_cpu_moe": 48, "n_threads": 16}),
              Point("all on GPU", 16 * GIB, why="predicted 18.90 GiB, over the cap")]
    lines = speed_table(points).splitlines()
    assert lines[2:] == [
        "| 16G | llama_bench (tuner) | 136.3 ± 4.1 | 900.0 ± 12.0 | 15.20 | 15.10 | `n_cpu_moe=9` |",
        "| 16G | all experts on CPU | 40.0 ± 0.5 | — | — | 4.00 | `n_cpu_moe=48` |",
        "| 16G | all on GPU | — | — | — | — | predicted 18.90 GiB, over the cap |",
        "",
        "Knobs with one value in every row that sets them: `n_threads=16`",
    ]


# -- a hand-made study: llama_bench and cache tuners, baselines and a grid, at two caps --------

STUDY = """
caps = ["12G", "16G"]
backends = ["llama_bench", "cache"]
[model]
preset = "qwen3-30b-a3b"
skews = [1]
[workload]
prompt_tokens = 64
gen_tokens = 64
[tuner]
trials = 4
[baselines]
backend = "llama_bench"
[grid]
backend = "llama_bench"
axes = { n_cpu_moe = [8, 12, 20] }
"""


def _row(n_cpu_moe: int, decode: float, peak_gib: float, seconds: float = 10.0, extra: dict | None = None) -> dict:
    figure = {"mean": decode, "std": 1.0, "samples": [decode - 1, decode + 1]}
    return {"config": {"n_cpu_moe": n_cpu_moe}, "predicted_vram": int(peak_gib * GIB), "outcome": "ok", "message": "",
            "peak_vram": int(peak_gib * GIB), "decode": figure, "prefill": {"mean": 10 * decode, "std": 5.0, "samples": []},
            "objective": figure, "extra": extra or {}, "seconds": seconds}


def _record(part: str, kind: str, cap: int | None, backend: str, **body) -> dict:
    return {"study": "hand", "part": part, "kind": kind, "variant": "skew1", "skew": 1.0, "cap": cap,
            "backend": backend, "machine": {"fingerprint": "abc", "description": "H100 · 16 cores"},
            "model": {"file": "q.gguf", "name": "q", "fingerprint": "f00", "file_bytes": 19 * GIB, "preset": "qwen3-30b-a3b",
                      "quant": "q4_k_m", "skew": 1.0, "seed": 0}, "autotune_commit": "1234567", **body}


def _tuner(cap_gib: int, backend: str, decodes: list[float], extra: dict | None = None) -> dict:
    trials = [_row(20, d, cap_gib - 1, extra=extra) | {"number": i, "elapsed_s": 30.0 * (i + 1)} for i, d in enumerate(decodes)]
    return _record(f"skew1-{cap_gib}G-tuner-{backend}", "tuner", cap_gib * GIB, backend, command="autotune run ...",
                   trials=trials, winner=trials[int(np.argmax(decodes))] | {"backend": backend})


@pytest.fixture()
def hand_study(tmp_path: Path) -> Path:
    (tmp_path / "study.toml").write_text(STUDY)
    results = tmp_path / "results"
    results.mkdir()
    records = [
        _tuner(12, "llama_bench", [70.0, 80.0, 78.0, 83.0]),
        _tuner(16, "llama_bench", [120.0, 131.0, 125.0, 128.0]),
        _tuner(12, "cache", [90.0, 95.0], extra={"hit_rate": 0.8, "pcie_bytes_per_token": 40 * 2**20}),
        _tuner(16, "cache", [140.0], extra={"hit_rate": 0.9, "pcie_bytes_per_token": 20 * 2**20}),
        _record("skew1-12G-baselines", "baselines", 12 * GIB, "llama_bench", rows=[_row(48, 30.0, 4.0), _row(20, 75.0, 11.8)],
                baselines={"all_cpu": {"row": 0, "why": ""}, "best_n_cpu_moe": {"row": 1, "why": ""},
                           "all_gpu": {"row": None, "why": "predicted 18.90 GiB, over the cap"}}),
        _record("skew1-grid", "grid", None, "llama_bench",
                rows=[_row(8, 130.0, 15.5, seconds=20.0), _row(12, 110.0, 14.0), _row(20, 82.0, 11.9)]),
    ]
    for record in records:
        (results / f"{record['part']}.json").write_text(json.dumps(record))
    return tmp_path


def test_convergence_compares_the_tuner_of_the_grids_backend_at_each_cap(hand_study: Path):
    results = load_results(hand_study)
    [at12, at16] = convergence(results, results.variants()[0], orders=100)
    assert (at12.rows, at12.grid_best, at16.rows, at16.grid_best) == (1, 82.0, 3, 130.0)  # 15.5 and 14 GiB > 12G
    assert list(at16.tuners) == ["llama_bench"]  # the cache tuner searches another space
    assert at16.grid.best == [130.0, 130.0, 130.0] and at16.grid.seconds == [20.0, 30.0, 40.0]
    table = convergence_table([at12, at16], "tok/s")
    # 12G: target 0.95 x 82 = 77.9: the tuner's 2nd trial (80) reaches it after 1.0 min; the grid's one row at once
    assert "| 12G | 1 | 82.0 | llama_bench | 83.0 (1.01) | 4 / 2.0 | 2 | 1 [1–1] | 1 | 1.0 | 0.2 [0.2–0.2] | 0.2 |" in table
    # 16G: target 123.5: the tuner needs 2 trials; the grid in its order 1 (its first row is the best)
    assert "| 16G | 3 | 130.0 | llama_bench | 131.0 (1.01) | 4 / 2.0 | 2 |" in table


def test_cache_points_go_by_increasing_cap_whatever_order_the_study_runs_its_caps(hand_study: Path):
    toml = hand_study / "study.toml"
    toml.write_text(toml.read_text().replace('caps = ["12G", "16G"]', 'caps = ["16G", "12G"]'))
    points = cache_points(load_results(hand_study))
    assert [(p.cap, p.hit_rate) for p in points] == [(12 * GIB, 0.8), (16 * GIB, 0.9)]


def test_report_writes_every_figure_with_its_table(hand_study: Path):
    written = write_report(hand_study)
    assert [p.name for p in written] == ["report.md", "speed-skew1.png", "convergence-skew1.png", "cache.png"]
    text = (hand_study / "report.md").read_text()
    for expected in (
        "| 12G | llama_bench (tuner) | 83.0 ± 1.0 | 830.0 ± 5.0 |",
        "| 16G | cache (tuner) | 140.0 ± 1.0 |",
        "| 12G | grid's best | 82.0 ± 1.0 |",  # the rows over 12 GiB measured are left out
        "| 12G | all on GPU | — | — | — | — | predicted 18.90 GiB, over the cap |",
        "| skew1 | 12G | cache | 0.800 | 40.00 | 95.0 ± 1.0 |",
        "| skew1 | 16G | cache | 0.900 | 20.00 | 140.0 ± 1.0 |",
        "Machine: H100 · 16 cores (hardware fingerprint abc)",
        "autotune study run studies/",
        "Not run yet (1 part(s)): skew1-16G-baselines",
        "so a llama_bench peak is the measured one plus the memory model's KV cache",
    ):
        assert expected in text, expected
    assert text.count("*Figure ") == 3
    for path in written[1:]:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"

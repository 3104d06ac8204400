"""Trace record and replay (issue 30, part 2), on the CPU: a routing trace recorded from the
``small`` synthetic model (temporal routing) replays through the runtime's expert cache, and
the cache simulation's hit rate equals the runtime's for each policy; the trace file's
format and its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotune.cache_runtime.trace_file import Phase, Trace, read_trace, write_trace
from autotune.errors import AutotuneError
from autotune.synth import write_synthetic_model

torch = pytest.importorskip("torch")

from autotune.cache_runtime.budget import GIB, model_sizes, plan_with_slots  # noqa: E402
from autotune.cache_runtime.cache_config import CacheConfig  # noqa: E402
from autotune.cache_runtime.engine import Engine  # noqa: E402
from autotune.cache_runtime.learned import read_placement, write_placement  # noqa: E402
from autotune.cache_runtime.replay import drive  # noqa: E402
from autotune.studies.cache_simulation import SimulatedCache, simulate  # noqa: E402

CTX = 128
REQUESTS = [(12, 16), (8, 12)]  # (prompt tokens, decode steps) of the recorded workload
SLOTS = 80  # of 8 x 32 experts: misses happen


pytestmark = pytest.mark.usefixtures("one_torch_thread", "own_data_dir")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "small.gguf"
    write_synthetic_model(path, preset="small", seed=0)  # the default, temporal routing
    return path


@pytest.fixture(scope="module")
def recorded(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace of two requests served with full residency, written and read back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module's fixture runs before the autouse one
    engine = Engine(small_model, device="cpu", kernels="torch", max_ctx=CTX)
    engine.trace.enabled = True
    rng = np.random.default_rng(0)
    for prompt, steps in REQUESTS:
        engine.generate(rng.integers(1, 8000, prompt).tolist(), steps + 1)  # the first token ends the prefill
    torch.set_num_threads(threads)
    return write_trace(tmp_path_factory.mktemp("traces") / "small.npz", engine.recorded_trace())


def _config(model: Path, **knobs) -> CacheConfig:
    """A config whose cap holds exactly SLOTS expert slots on the CPU (float32 KV cache)."""
    base = CacheConfig(vram_cap=GIB, max_ctx=CTX, **knobs)
    cap = plan_with_slots(model_sizes(model), base, SLOTS, kv_element_bytes=4).peak
    return CacheConfig.from_dict({**base.to_dict(), "vram_cap": cap})


def test_the_recorded_trace_holds_every_token_with_its_phase(small_model: Path, recorded: Path) -> None:
    trace = read_trace(recorded)
    sizes = model_sizes(small_model)
    assert (trace.n_layers, trace.n_expert, trace.k) == (sizes.n_layers, sizes.n_expert, sizes.n_expert_used)
    assert trace.n_tokens == sum(p + s for p, s in REQUESTS)
    assert list(trace.calls()) == [c for p, s in REQUESTS for c in [(Phase.PREFILL_START, p)] + [(Phase.DECODE, 1)] * s]
    assert len(trace.decode_ids()) == sum(s for _, s in REQUESTS)
    assert all(len(set(row)) == trace.k for row in trace.ids.reshape(-1, trace.k).tolist())


@pytest.mark.parametrize("knobs", [
    dict(eviction="lru", miss_mode="copy", rebalance_interval=4),
    dict(eviction="lfu_decay", miss_mode="copy", rebalance_interval=4, decay=0.5, placement="file", slot_split=0.5),
    dict(eviction="static", placement="file"),
], ids=["lru", "lfu_decay-seeded", "static-seeded"])
def test_simulated_hit_rate_equals_the_runtimes_on_the_replayed_trace(small_model: Path, recorded: Path,
                                                                      tmp_path: Path, knobs: dict) -> None:
    trace = read_trace(recorded)
    seed = None
    if knobs.get("placement") == "file":  # learned placement seeded from the trace's own first request
        counts = np.zeros((trace.n_layers, trace.n_expert))
        first = trace.ids[:REQUESTS[0][0]]
        for layer in range(trace.n_layers):
            counts[layer] = np.bincount(first[:, layer].ravel(), minlength=trace.n_expert)
        knobs = {**knobs, "placement": str(write_placement(tmp_path / "p.json", counts, trace.fingerprint, "test"))}
        seed = read_placement(knobs["placement"], trace.fingerprint, counts.shape)
    else:
        knobs = {**knobs, "learned_placement": False}
    cfg = _config(small_model, **knobs)
    engine = Engine(small_model, device="cpu", kernels="torch", cache_config=cfg, replay=trace)
    engine.persist_routing = False
    engine.trace.enabled = True
    drive(engine, trace)
    np.testing.assert_array_equal(engine.trace.ids(), trace.ids)  # the runtime routed as recorded
    runtime = engine.cache_stats()
    simulated = simulate(trace, SimulatedCache.of_runtime(small_model, cfg, kv_element_bytes=4, seed=seed))
    assert simulated.tokens == runtime["tokens"] == len(trace.decode_ids())
    assert runtime["slots_per_layer"] == list(SimulatedCache.of_runtime(
        small_model, cfg, kv_element_bytes=4, seed=seed).slots)
    assert 0 < runtime["hit_rate"] < 1
    assert simulated.hit_rate == pytest.approx(runtime["hit_rate"], abs=0.01)
    assert simulated.hit_rate_per_layer == pytest.approx(runtime["hit_rate_per_layer"], abs=0.01)
    assert (simulated.rebalances, simulated.admissions) == (runtime["rebalances"], runtime["admissions"])


def test_replay_keeps_the_routers_weights_of_the_traced_experts(small_model: Path, recorded: Path) -> None:
    """A replay of the model's own trace computes what the model computed: same ids, same weights."""
    trace = read_trace(recorded)
    own = Engine(small_model, device="cpu", kernels="torch", max_ctx=CTX)
    replayed = Engine(small_model, device="cpu", kernels="torch", max_ctx=CTX, replay=trace)
    prompt = np.random.default_rng(0).integers(1, 8000, REQUESTS[0][0]).tolist()  # the trace's first request
    torch.testing.assert_close(replayed.prefill(prompt), own.prefill(prompt))


def test_a_trace_of_another_model_is_refused(tiny_model: Path, recorded: Path) -> None:
    with pytest.raises(AutotuneError, match="recorded on another model"):
        Engine(tiny_model, device="cpu", kernels="torch", replay=read_trace(recorded))


def test_trace_file_round_trip_and_refusals(tmp_path: Path) -> None:
    ids = np.random.default_rng(1).integers(0, 16, (5, 3, 2)).astype(np.int16)
    phase = np.array([2, 1, 0, 0, 2], dtype=np.int8)
    path = write_trace(tmp_path / "t.trace", Trace(ids, phase, "abc", 16))
    back = read_trace(path)
    np.testing.assert_array_equal(back.ids, ids)
    np.testing.assert_array_equal(back.phase, phase)
    assert (back.fingerprint, back.n_expert) == ("abc", 16)
    assert list(back.calls()) == [(Phase.PREFILL_START, 2), (Phase.DECODE, 1), (Phase.DECODE, 1),
                                  (Phase.PREFILL_START, 1)]
    with pytest.raises(AutotuneError, match="does not exist"):
        read_trace(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(AutotuneError, match="cannot read"):
        read_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", ids=ids, phase=phase, meta=np.array('{"format": "x"}'))
    with pytest.raises(AutotuneError, match="not an autotune routing trace"):
        read_trace(tmp_path / "other.npz")
    with pytest.raises(AutotuneError, match="top-2; the model 3, 16, top-4"):
        back.check_model("abc", 3, 16, 4)
    write_trace(tmp_path / "cut.npz", Trace(ids, np.array([1, 1, 0, 0, 2], dtype=np.int8), "abc", 16))
    with pytest.raises(AutotuneError, match="without its prompt's first"):
        read_trace(tmp_path / "cut.npz")


def test_the_simulation_refuses_what_it_does_not_model(tiny_model: Path) -> None:
    trace = Trace(np.zeros((1, 3, 4), dtype=np.int16), np.zeros(1, dtype=np.int8), "abc", 16)
    with pytest.raises(AutotuneError, match="slots for 4 layers; the trace has 3"):
        simulate(trace, SimulatedCache((4,) * 4, "lru", "copy", 4, 0.9, 10))
    with pytest.raises(AutotuneError, match="lend_prefill_room"):
        SimulatedCache.of_runtime(tiny_model, CacheConfig(vram_cap=GIB, lend_prefill_room=True), kv_element_bytes=4)

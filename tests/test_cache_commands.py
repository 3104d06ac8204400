"""``autotune serve`` launch commands of cache configs: exact flags, round trips for random
configs and nasty paths, canonical configs, and nothing but the words reaching the shell."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.backends.base import ConfigError
from autotune.backends.cache.commands import FORMATS, format_command, parse_command, serve_argv
from autotune.backends.cache.knobs import normalize
from autotune.cache_runtime.cache_config import CACHE_KNOBS
from autotune.units import parse_size, size_text

NASTY_PATHS = [
    "models/qwen 30b.gguf",
    "it's \"quoted\".gguf",
    "-leading-dash.gguf",
    "--help",
    "--vram-cap",
    "/tmp/ünïcødé 模型 🦙.gguf",
    "$(touch /tmp/autotune-pwned); `id`; rm -rf ~ | cat > x & echo.gguf",
    "line\nbreak\ttab.gguf",
    "C:\\models\\back\\slash.gguf",
]
unit_fractions = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def configs(draw: st.DrawFn) -> dict:
    config = {
        "vram_cap": draw(st.one_of(st.integers(1, 1 << 45), st.integers(1, 64).map(lambda g: g << 30))),
        "eviction": draw(st.sampled_from(CACHE_KNOBS['eviction'].choices)),
        "miss_mode": draw(st.sampled_from(CACHE_KNOBS['miss_mode'].choices)),
        "rebalance_interval": draw(st.integers(0, 100_000)),
        "decay": draw(unit_fractions),
        "prefetch_depth": draw(st.integers(0, 64)),
        "prefetch_engine": draw(st.sampled_from(CACHE_KNOBS['prefetch_engine'].choices)),
        "prefill_bypass": draw(st.integers(0, 1 << 20)),
        "slot_split": draw(unit_fractions),
        "prefill_chunk": draw(st.integers(1, 1 << 16)),
        "learned_placement": draw(st.booleans()),
        "lend_prefill_room": draw(st.booleans()),
        "max_ctx": draw(st.integers(1, 1 << 20)),
        "chunk_rounds": draw(st.sampled_from(CACHE_KNOBS['chunk_rounds'].choices)),
        "gate_up_warps": draw(st.sampled_from(CACHE_KNOBS['gate_up_warps'].choices)),
        "int8_inputs": draw(st.booleans()),
    }
    return {key: value for key, value in config.items() if key == "vram_cap" or draw(st.booleans())}


paths = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), path=st.one_of(paths, st.sampled_from(NASTY_PATHS)), fmt=st.sampled_from(FORMATS))
def test_every_format_round_trips(config: dict, path: str, fmt: str):
    assert parse_command(format_command(config, path, fmt)) == (normalize(config), Path(path))


@given(n_bytes=st.integers(1, 1 << 50))
def test_sizes_are_written_exactly(n_bytes: int):
    assert parse_size(size_text(n_bytes)) == n_bytes


def test_the_serve_command_has_every_knob_as_a_flag():
    config = {"vram_cap": 16 * 2**30, "eviction": "lfu_decay", "rebalance_interval": 32, "decay": 0.9,
              "prefetch_depth": 2, "prefetch_engine": "dma", "slot_split": 0.25}
    assert format_command(config, "/m/q 30b.gguf", "serve") == (
        "autotune serve '/m/q 30b.gguf' --vram-cap 16G --ctx 4096 --eviction lfu_decay --miss-mode zero_copy "
        "--cpu-threads 1 --no-cpu-repack --pcie-share 0.0 --prefetch-depth 2 --prefetch-engine dma --rebalance-interval 32 "
        "--decay 0.9 --learned-placement "
        "--slot-layout spread --slot-split 0.25 --no-lend-prefill-room --chunk-rounds 2 --gate-up-warps 4 --no-int8-inputs "
        "--prefill-bypass 32 "
        "--prefill-chunk 2048"
    )
    assert json.loads(format_command(config, "q.gguf", "json")) == {"model": "q.gguf", "config": normalize(config)}


def test_a_config_stored_with_a_retired_knob_still_reads():
    stored = {"vram_cap": 2**30, "miss_mode": "cpu", "cpu_handoff": "flags"}  # before cpu_handoff went
    assert normalize(stored) == normalize({"vram_cap": 2**30, "miss_mode": "cpu"})
    assert parse_command(json.dumps({"model": "q.gguf", "config": stored}))[0] == normalize(stored)
    with pytest.raises(ConfigError, match="unknown cache config key"):
        normalize({"vram_cap": 2**30, "cpu_handof": "flags"})


def test_normalize_fixes_knobs_a_choice_makes_moot():
    static = normalize({"vram_cap": 1, "eviction": "static", "miss_mode": "cpu", "rebalance_interval": 16, "decay": 0.5})
    # static eviction with the CPU computing the misses is llama.cpp's split: the miss mode stays
    assert (static["miss_mode"], static["rebalance_interval"], static["decay"]) == ("cpu", 0, 0.95)
    assert normalize({"vram_cap": 1, "miss_mode": "zero_copy", "cpu_threads": 3})["cpu_threads"] == 1
    assert normalize({"vram_cap": 1, "eviction": "lru", "decay": 0.5})["decay"] == 0.95
    assert normalize({"vram_cap": 1, "learned_placement": False, "slot_split": 0.5})["slot_split"] == 0.0
    assert normalize({"vram_cap": 1, "prefetch_depth": 0, "prefetch_engine": "dma"})["prefetch_engine"] == "sm"


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "needs vram_cap"),
        ({"vram_cap": "16G"}, "vram_cap must be an integer"),
        ({"vram_cap": 0}, "at least 1"),
        ({"vram_cap": 1, "eviction": "fifo"}, "eviction must be one of"),
        ({"vram_cap": 1, "prefetch_depth": -1}, "at least 0"),
        ({"vram_cap": 1, "prefill_chunk": 0}, "prefill_chunk must be at least 1"),
        ({"vram_cap": 1, "slot_split": 1.5}, r"within \[0, 1\]"),
        ({"vram_cap": 1, "decay": float("nan")}, "must be a number"),
        ({"vram_cap": 1, "learned_placement": "yes"}, "true or false"),
        ({"vram_cap": 1, "lend_prefill_room": 1}, "lend_prefill_room must be true or false"),
        ({"vram_cap": 1, "prefetch": 2}, "unknown cache config key"),
        ({"vram_cap": 1, "chunk_rounds": 3}, "chunk_rounds must be one of 1, 2, 4"),
        ({"vram_cap": 1, "gate_up_warps": 6}, "gate_up_warps must be one of 2, 4, 8, 16"),
        ({"vram_cap": 1, "prefetch_engine": "cpu"}, "prefetch_engine must be one of sm, dma"),
    ],
)
def test_invalid_configs_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        normalize(config)


def test_commands_people_write_by_hand_parse():
    config, path = parse_command("autotune serve ~/q.gguf --vram-cap=12G --eviction lru --prefetch-depth 1")
    assert path == Path("~/q.gguf")
    assert config == normalize({"vram_cap": 12 * 2**30, "eviction": "lru", "prefetch_depth": 1})
    config, path = parse_command("/usr/bin/autotune serve --no-learned-placement --vram-cap 1000000 --port 9000 "
                                 "--host=0.0.0.0 --lend-prefill-room -- --odd.gguf")
    assert path == Path("--odd.gguf") and config["vram_cap"] == 1000000 and not config["learned_placement"]
    assert config["lend_prefill_room"]


@pytest.mark.parametrize(
    "command, message",
    [
        ("autotune serve q.gguf --vram-cap 16G --best", "not a knob autotune reads"),
        ("autotune serve q.gguf --vram-cap", "needs a value"),
        ("autotune serve q.gguf --vram-cap lots", "cannot read the size"),
        ("autotune serve q.gguf --vram-cap 16G --prefetch-depth two", "expects an integer"),
        ("autotune serve --vram-cap 16G", "must name one model"),
        ("autotune serve a.gguf b.gguf --vram-cap 16G", "must name one model, not 2"),
        ("autotune serve q.gguf", "needs vram_cap"),
        ("autotune run q.gguf --vram-cap 16G", "not an `autotune serve`"),
        ("autotune serve 'q.gguf", "cannot split"),
        ('{"model": "q.gguf"}', "not an autotune JSON config"),
    ],
)
def test_unreadable_commands_are_config_errors(command, message):
    with pytest.raises(ConfigError, match=message):
        parse_command(command)


def test_the_shell_sees_exactly_the_words_and_runs_nothing_else(tmp_path):
    """Each command, run by bash with autotune replaced by an argv printer, prints its own argv."""
    printer = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    for path in NASTY_PATHS:
        command = format_command({"vram_cap": 2**34}, path, "serve")
        script = f'autotune() {{ {printer} "$@"; }}\n{command}\n'
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
        assert json.loads(done.stdout) == serve_argv({"vram_cap": 2**34}, path)[1:]
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/autotune-pwned").exists()

"""Launch commands: exact flags, round trips for random configs and nasty paths, no injection."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.backends.base import ConfigError
from autotune.backends.llama_cpp.commands import (
    BENCH_UNEXPRESSED,
    FORMATS,
    bench_argv,
    format_command,
    parse_command,
    python_snippet,
    server_argv,
)
from autotune.backends.llama_cpp.knobs import KEYS, KV_TYPES, cpu_expert_patterns, normalize

NASTY_PATHS = [
    "models/qwen 30b.gguf",
    "it's \"quoted\".gguf",
    "-leading-dash.gguf",
    "--help",
    "/tmp/ünïcødé 模型 🦙.gguf",
    "$(touch /tmp/autotune-pwned); `id`; rm -rf ~ | cat > x & echo.gguf",
    "line\nbreak\ttab.gguf",
    "a'); import os; os.system('id'); ('.gguf",
    "C:\\models\\back\\slash.gguf",
]


@st.composite
def configs(draw: st.DrawFn) -> dict:
    flash_attn = draw(st.booleans())
    n_batch = draw(st.integers(1, 8192))
    config = {
        "n_gpu_layers": draw(st.integers(0, 200)),
        "n_cpu_moe": draw(st.integers(0, 94)),
        "flash_attn": flash_attn,
        "n_batch": n_batch,
        "n_ubatch": draw(st.integers(1, n_batch)),
        "type_k": draw(st.sampled_from(KV_TYPES)),
        "type_v": draw(st.sampled_from(KV_TYPES)) if flash_attn else "f16",
        "n_threads": draw(st.integers(1, 256)),
        "n_threads_batch": draw(st.integers(1, 256)),
        "op_offload": draw(st.booleans()),
        "use_mmap": draw(st.booleans()),
    }
    if draw(st.booleans()):
        config["n_ctx"] = draw(st.integers(1, 1 << 20))
    layers = draw(st.lists(st.integers(0, 127), max_size=20))
    if layers:
        config["cpu_moe_layers"] = layers
    return config


paths = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), path=st.one_of(paths, st.sampled_from(NASTY_PATHS)), fmt=st.sampled_from(FORMATS))
def test_every_format_round_trips(config: dict, path: str, fmt: str):
    if fmt == "llama-bench" and "," in path:  # llama-bench splits -m on commas: no command can name this path
        with pytest.raises(ConfigError, match="comma-separated"):
            format_command(config, path, fmt)
        return
    parsed, parsed_path = parse_command(format_command(config, path, fmt))
    expected = normalize(config)
    if fmt == "llama-bench":
        expected = normalize({k: v for k, v in config.items() if k not in BENCH_UNEXPRESSED})
        expected["n_threads_batch"] = expected["n_threads"]
    assert parsed == expected
    assert parsed_path == Path(path)


def test_normalize_puts_placement_in_canonical_form():
    config = normalize({"n_cpu_moe": 2, "cpu_moe_layers": [5, 2, 3, 1, 9, 5]})
    assert config["n_cpu_moe"] == 4 and config["cpu_moe_layers"] == [5, 9]
    assert "cpu_moe_layers" not in normalize({"cpu_moe_layers": [1, 0]})
    assert normalize({"cpu_moe_layers": [1, 0]})["n_cpu_moe"] == 2
    assert cpu_expert_patterns({"n_cpu_moe": 2, "cpu_moe_layers": [7, 4]}) == [
        r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps",
        r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps",
        r"blk\.(4|7)\.ffn_(up|down|gate|gate_up)_(ch|)exps",
    ]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"n_batch": 256, "n_ubatch": 512}, "larger than n_batch"),
        ({"flash_attn": False, "type_v": "q8_0"}, "needs flash_attn"),
        ({"type_k": "q5_1"}, "type_k must be one of"),
        ({"n_threads": 0}, "at least 1"),
        ({"n_threads": "8; rm -rf /"}, "must be an integer"),
        ({"flash_attn": "on"}, "true or false"),
        ({"n_gpu_layer": 99}, "unknown llama.cpp config key"),
        ({"cpu_moe_layers": ["1|.*"]}, "must be an integer"),
    ],
)
def test_invalid_configs_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        normalize(config)


def test_llama_server_command_uses_current_flag_names():
    config = {"n_gpu_layers": 49, "n_cpu_moe": 12, "cpu_moe_layers": [20, 30], "flash_attn": True, "n_ctx": 4096,
              "n_batch": 2048, "n_ubatch": 1024, "type_k": "q8_0", "type_v": "q8_0", "n_threads": 16,
              "n_threads_batch": 8, "op_offload": False, "use_mmap": False}
    assert format_command(config, "/m/q.gguf", "llama-server") == (
        "llama-server -m /m/q.gguf -ngl 49 --n-cpu-moe 12 -ot 'blk\\.(20|30)\\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU' "
        "-fa on -c 4096 -b 2048 -ub 1024 -ctk q8_0 -ctv q8_0 -t 16 -tb 8 -lm none --no-op-offload"
    )
    assert format_command(config, "/m/q.gguf", "llama-bench") == (
        "llama-bench -m /m/q.gguf -p 512 -n 128 -r 3 -o jsonl -ngl 49 -ncmoe 12 "
        "-ot 'blk\\.(20|30)\\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU' -fa 1 -b 2048 -ub 1024 -ctk q8_0 -ctv q8_0 "
        "-t 16 -lm none -nopo 1"
    )
    assert "-t 16,8" in shlex.join(bench_argv(config, "/m/q.gguf", both_thread_counts=True))


def test_commands_people_write_by_hand_parse():
    config, path = parse_command("llama-server -m ~/q.gguf -ngl 99 --n-cpu-moe 12 -fa on -t 16 --no-mmap")
    assert path == Path("~/q.gguf")
    assert (config["n_gpu_layers"], config["n_cpu_moe"], config["flash_attn"], config["use_mmap"]) == (99, 12, True, False)
    assert config["n_threads"] == config["n_threads_batch"] == 16
    config, _ = parse_command(r"/opt/bin/llama-server -m q.gguf -ot 'blk\.(0|1|2|5)\.ffn_(up|down|gate)_exps=CPU'")
    assert config["n_cpu_moe"] == 3 and config["cpu_moe_layers"] == [5]
    config, _ = parse_command("llama-bench -m q.gguf -ngl 99 -ncmoe 4 -fa 1 -t 8 -nopo 1 -p 512 -n 128")
    assert (config["n_cpu_moe"], config["op_offload"], config["n_threads_batch"]) == (4, False, 8)


@pytest.mark.parametrize(
    "command, message",
    [
        ("llama-server -m q.gguf --mlock", "not a knob autotune reads"),
        ("llama-server -m q.gguf -fa auto", "fixed setting"),
        ("llama-server -m q.gguf -ot 'attn_q=CUDA0'", "expert placements on the CPU"),
        ("llama-server -m q.gguf -ngl", "needs a value"),
        ("llama-server -ngl 99", "names no model"),
        ("llama-bench -m q.gguf -t 8,16", "one value per knob"),
        ("llama-server -m 'q.gguf", "cannot split"),
        ("vllm serve q", "not a llama-server"),
        ("import os\nos.system('id')", "no llama_cpp.Llama"),
        ("import llama_cpp\nllm = llama_cpp.Llama(model_path='q', n_ctx=open('x'))", "literal"),
        ('{"model": "q.gguf"}', "not an autotune JSON config"),
    ],
)
def test_unreadable_commands_are_config_errors(command, message):
    with pytest.raises(ConfigError, match=message):
        parse_command(command)


def test_the_shell_sees_exactly_the_words_and_runs_nothing_else(tmp_path):
    """Each command, run by bash with the tool replaced by an argv printer, prints its own argv."""
    printer = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    config = {"n_cpu_moe": 3, "cpu_moe_layers": [7, 9], "n_threads": 4}
    for path in NASTY_PATHS:
        for fmt, argv in (("llama-server", server_argv(config, path)), ("llama-bench", bench_argv(config, path))):
            command = format_command(config, path, fmt)
            script = f'{fmt}() {{ {printer} "$@"; }}\n{command}\n'
            done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
            assert json.loads(done.stdout) == argv[1:]
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/autotune-pwned").exists()


def test_the_python_snippet_holds_no_code_but_the_llama_call():
    for path in NASTY_PATHS:
        for config in ({}, {"n_cpu_moe": 2, "cpu_moe_layers": [5]}):
            tree = ast.parse(python_snippet(config, path))
            calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
            names = sorted(getattr(call.func, "attr", getattr(call.func, "id", "")) for call in calls)
            assert names == (["Llama", "cpu_experts"] if config else ["Llama"])
            assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.With)) for node in tree.body)
            model_path = next(k.value for c in calls for k in c.keywords if k.arg == "model_path")
            assert ast.literal_eval(model_path) == path


@settings(max_examples=300, deadline=None, database=None)
@given(key=st.sampled_from(KEYS), value=st.one_of(st.text(max_size=30), st.floats(), st.lists(st.text(max_size=5), min_size=1)),
       fmt=st.sampled_from(FORMATS))
def test_no_config_value_but_a_valid_knob_value_reaches_a_command(key: str, value, fmt: str):
    """Text, floats and lists of text are refused before any command is written (a valid KV type excepted)."""
    if (key in ("type_k", "type_v") and value in KV_TYPES) or (key == "cpu_moe_layers" and not value):
        return  # a valid KV type; an empty placement list means none
    with pytest.raises(ConfigError):
        format_command({"flash_attn": True, key: value}, "m.gguf", fmt)


def test_llama_bench_declines_a_model_whose_path_has_a_comma(tiny_model: Path, tmp_path: Path):
    from autotune.backends.llama_cpp.bench import LlamaBenchBackend
    from autotune.model_info import inspect_model

    odd = tmp_path / "q4,k_m.gguf"
    odd.symlink_to(tiny_model)
    assert LlamaBenchBackend().supports(inspect_model(odd)) == (
        "llama-bench reads -m as a comma-separated list: the model's path has a comma")

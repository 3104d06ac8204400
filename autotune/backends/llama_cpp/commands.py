"""Launch commands for a llama.cpp config, and the parser that reads them back.

Formats (``FORMATS``): ``llama-server`` and ``llama-bench`` command lines, shell-quoted with
shlex so that no model path or value can inject shell syntax; ``python``, a llama-cpp-python
snippet (expert placement through ``autotune.backends.llama_cpp.buft_overrides.cpu_experts``, as
``Llama`` has no keyword for it); and ``json``. ``parse_command`` turns any of them back
into (normalized config, model path). llama-bench has no context size and one thread count
for both phases, so its commands carry neither ``n_ctx`` nor ``n_threads_batch``.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path
from typing import Any, Callable

from autotune.backends.base import Config, ConfigError, Workload
from autotune.backends.llama_cpp.knobs import EXPERTS_REGEX, KV_TYPES, layers_regex, normalize

FORMATS = ("llama-server", "llama-bench", "python", "json")
BENCH_UNEXPRESSED = ("n_ctx", "n_threads_batch")
KV_TYPE_CONSTANTS = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}
PYTHON_KWARGS = ("n_gpu_layers", "flash_attn", "n_ctx", "n_batch", "n_ubatch", "type_k", "type_v",
                 "n_threads", "n_threads_batch", "op_offload", "use_mmap")

# -ot patterns autotune writes (and the older three-tensor form llama.cpp used to write).
_EXPERT_SUFFIXES = (EXPERTS_REGEX, r"\.ffn_(up|down|gate)_exps")
_LAYERS = re.compile(r"^blk\\\.(\d+|\(\d+(?:\|\d+)*\))(.*)$")


def server_argv(config: Config, model_path: Path | str, binary: str = "llama-server") -> list[str]:
    c = normalize(config)
    argv = [binary, "-m", str(model_path), "-ngl", str(c["n_gpu_layers"])]
    if c["n_cpu_moe"]:
        argv += ["--n-cpu-moe", str(c["n_cpu_moe"])]
    if c.get("cpu_moe_layers"):
        argv += ["-ot", layers_regex(c["cpu_moe_layers"]) + "=CPU"]
    argv += ["-fa", "on" if c["flash_attn"] else "off"]
    if "n_ctx" in c:
        argv += ["-c", str(c["n_ctx"])]
    argv += ["-b", str(c["n_batch"]), "-ub", str(c["n_ubatch"]), "-ctk", c["type_k"], "-ctv", c["type_v"],
             "-t", str(c["n_threads"]), "-tb", str(c["n_threads_batch"]), "-lm", "mmap" if c["use_mmap"] else "none"]
    if not c["op_offload"]:
        argv.append("--no-op-offload")
    return argv


def bench_path_problem(model_path: Path | str) -> str | None:
    """Why llama-bench cannot be given this model path, or None: it splits ``-m`` on commas."""
    if "," in str(model_path):
        return "llama-bench reads -m as a comma-separated list: the model's path has a comma"
    return None


def bench_argv(
    config: Config, model_path: Path | str, workload: Workload | None = None, binary: str = "llama-bench",
    both_thread_counts: bool = False,
) -> list[str]:
    """A llama-bench run of the config; ``both_thread_counts`` adds n_threads_batch to ``-t``
    (llama-bench then runs every test with each count)."""
    problem = bench_path_problem(model_path)
    if problem:
        raise ConfigError(f"{model_path}: {problem} (link the model under another name)")
    c, w = normalize(config), workload or Workload()
    threads = [c["n_threads"]]
    if both_thread_counts and c["n_threads_batch"] != c["n_threads"]:
        threads.append(c["n_threads_batch"])
    argv = [binary, "-m", str(model_path), "-p", str(w.n_prompt), "-n", str(w.n_gen), "-r", str(w.repetitions),
            "-o", "jsonl", "-ngl", str(c["n_gpu_layers"])]
    if c["n_cpu_moe"]:
        argv += ["-ncmoe", str(c["n_cpu_moe"])]
    if c.get("cpu_moe_layers"):
        argv += ["-ot", layers_regex(c["cpu_moe_layers"]) + "=CPU"]
    argv += ["-fa", "1" if c["flash_attn"] else "0", "-b", str(c["n_batch"]), "-ub", str(c["n_ubatch"]),
             "-ctk", c["type_k"], "-ctv", c["type_v"], "-t", ",".join(map(str, threads)),
             "-lm", "mmap" if c["use_mmap"] else "none", "-nopo", "0" if c["op_offload"] else "1"]
    return argv


def python_snippet(config: Config, model_path: Path | str) -> str:
    c = normalize(config)
    values = {key: repr(c[key]) for key in PYTHON_KWARGS if key in c}
    for key in ("type_k", "type_v"):
        values[key] = f"llama_cpp.{KV_TYPE_CONSTANTS[c[key]]}"
    kwargs = [f"model_path={str(model_path)!r}"] + [f"{key}={value}" for key, value in values.items()]
    if not (c["n_cpu_moe"] or c.get("cpu_moe_layers")):
        body = "llm = llama_cpp.Llama(\n" + "".join(f"    {kw},\n" for kw in kwargs) + ")\n"
        return "import llama_cpp\n\n" + body
    placement = f"n_cpu_moe={c['n_cpu_moe']}, layers={c.get('cpu_moe_layers', [])!r}"
    body = "    llm = llama_cpp.Llama(\n" + "".join(f"        {kw},\n" for kw in kwargs) + "    )\n"
    return (
        "import llama_cpp\n"
        "from autotune.backends.llama_cpp.buft_overrides import cpu_experts\n\n"
        f"with cpu_experts({placement}):  # these layers' experts stay on the CPU\n" + body
    )


def format_command(config: Config, model_path: Path | str, fmt: str) -> str:
    if fmt == "llama-server":
        return shlex.join(server_argv(config, model_path))
    if fmt == "llama-bench":
        return shlex.join(bench_argv(config, model_path))
    if fmt == "python":
        return python_snippet(config, model_path)
    if fmt == "json":
        return json.dumps({"model": str(model_path), "config": normalize(config)}, indent=2, ensure_ascii=False)
    raise ConfigError(f"unknown command format {fmt!r}; choose from: {', '.join(FORMATS)}")


# -- parsing ------------------------------------------------------------------


def int_flag(flag: str, value: str) -> int:
    """A flag's integer value (also the cache backend's commands); a ConfigError names the flag."""
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{flag} expects an integer, not {value!r}") from None


def _switch(flag: str, value: str) -> bool:
    if value.lower() in ("on", "1", "true", "enabled"):
        return True
    if value.lower() in ("off", "0", "false", "disabled"):
        return False
    raise ConfigError(f"{flag} {value!r}: autotune needs a fixed setting (on or off)")


def _kv_type(flag: str, value: str) -> str:
    if value not in KV_TYPES:
        raise ConfigError(f"{flag} {value!r}: autotune knows the cache types {', '.join(KV_TYPES)}")
    return value


def _load_mode(flag: str, value: str) -> bool:
    if value not in ("mmap", "none"):
        raise ConfigError(f"{flag} {value!r}: autotune knows the load modes mmap and none")
    return value == "mmap"


def _gpu_layers(flag: str, value: str) -> int:
    return 999 if value == "all" else int_flag(flag, value)


def _overrides(flag: str, value: str) -> list[int]:
    """Layers of ``-ot`` expert placements written as autotune writes them."""
    layers: list[int] = []
    for override in value.split(","):
        pattern, _, buffer_type = override.rpartition("=")
        match = _LAYERS.match(pattern)
        if buffer_type != "CPU" or not match or match.group(2) not in _EXPERT_SUFFIXES:
            raise ConfigError(f"{flag} {override!r}: autotune reads only expert placements on the CPU "
                              r"(blk\.(L|L|...)\.ffn_..._exps=CPU)")
        layers += [int(layer) for layer in match.group(1).strip("()").split("|")]
    return layers


_Parse = Callable[[str, str], Any]


def _table(entries: list[tuple[tuple[str, ...], str, _Parse]]) -> dict[str, tuple[str, _Parse]]:
    return {flag: (key, parse) for flags, key, parse in entries for flag in flags}


def _negated_switch(flag: str, value: str) -> bool:
    return not _switch(flag, value)


_COMMON = [
    (("-m", "--model"), "model", lambda flag, value: value),
    (("-ngl", "--gpu-layers", "--n-gpu-layers"), "n_gpu_layers", _gpu_layers),
    (("-ncmoe", "--n-cpu-moe"), "n_cpu_moe", int_flag),
    (("-ot", "--override-tensor"), "cpu_moe_layers", _overrides),
    (("-fa", "--flash-attn"), "flash_attn", _switch),
    (("-b", "--batch-size"), "n_batch", int_flag),
    (("-ub", "--ubatch-size"), "n_ubatch", int_flag),
    (("-ctk", "--cache-type-k"), "type_k", _kv_type),
    (("-ctv", "--cache-type-v"), "type_v", _kv_type),
    (("-t", "--threads"), "n_threads", int_flag),
    (("-lm", "--load-mode"), "use_mmap", _load_mode),
]
# flag -> (config key, parser of its value); key "" reads the value and ignores it.
_SERVER_VALUES = _table(_COMMON + [
    (("-c", "--ctx-size"), "n_ctx", int_flag),
    (("-tb", "--threads-batch"), "n_threads_batch", int_flag),
])
_SERVER_SWITCHES = {"--no-op-offload": ("op_offload", False), "--op-offload": ("op_offload", True),
                    "--no-mmap": ("use_mmap", False), "--mmap": ("use_mmap", True)}
_BENCH_VALUES = _table(_COMMON + [
    (("-nopo", "--no-op-offload"), "op_offload", _negated_switch),
    (("-p", "--n-prompt", "-n", "--n-gen", "-r", "--repetitions", "-o", "--output"), "", lambda flag, value: value),
])


def _parse_argv(argv: list[str], values: dict[str, tuple[str, _Parse]], switches: dict[str, tuple[str, bool]],
                tool: str) -> tuple[Config, Path]:
    parsed: dict[str, Any] = {}
    words = iter(argv[1:])
    for flag in words:
        if flag in switches:
            key, value = switches[flag]
        elif flag in values:
            raw = next(words, None)
            if raw is None:
                raise ConfigError(f"{flag} needs a value")
            if tool == "llama-bench" and "," in raw and flag not in ("-ot", "--override-tensor"):
                raise ConfigError(f"{flag} {raw!r}: one value per knob (a list makes several configs)")
            key, parse = values[flag]
            value = parse(flag, raw)
        else:
            raise ConfigError(f"{tool} flag {flag!r} is not a knob autotune reads")
        if key == "cpu_moe_layers":
            parsed[key] = parsed.get(key, []) + value
        elif key:
            parsed[key] = value
    if "model" not in parsed:
        raise ConfigError(f"the {tool} command names no model (-m)")
    path = Path(parsed.pop("model"))
    if tool == "llama-bench" and "n_threads" in parsed:
        parsed["n_threads_batch"] = parsed["n_threads"]  # llama-bench uses one count for both
    return normalize(parsed), path


def _parse_python(text: str) -> tuple[Config, Path]:
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ConfigError(f"not valid Python: {exc.msg} (line {exc.lineno})") from None
    calls = {_call_name(node): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    if "Llama" not in calls:
        raise ConfigError("the Python snippet has no llama_cpp.Llama(...) call")
    parsed: dict[str, Any] = {}
    for keyword in calls["Llama"].keywords:
        if keyword.arg in ("type_k", "type_v"):
            names = {constant: name for name, constant in KV_TYPE_CONSTANTS.items()}
            attr = keyword.value.attr if isinstance(keyword.value, ast.Attribute) else None
            if attr not in names:
                raise ConfigError(f"{keyword.arg}: expected one of llama_cpp.{', llama_cpp.'.join(names)}")
            parsed[keyword.arg] = names[attr]
        elif keyword.arg in PYTHON_KWARGS or keyword.arg == "model_path":
            parsed[keyword.arg] = _literal(keyword)
        else:
            raise ConfigError(f"Llama keyword {keyword.arg!r} is not a knob autotune reads")
    if "cpu_experts" in calls:
        placement = {keyword.arg: _literal(keyword) for keyword in calls["cpu_experts"].keywords}
        parsed["n_cpu_moe"] = placement.get("n_cpu_moe", 0)
        parsed["cpu_moe_layers"] = list(placement.get("layers", []))
    if "model_path" not in parsed:
        raise ConfigError("the Python snippet names no model_path")
    return normalize({k: v for k, v in parsed.items() if k != "model_path"}), Path(parsed["model_path"])


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _literal(keyword: ast.keyword) -> Any:
    try:
        return ast.literal_eval(keyword.value)
    except ValueError:
        raise ConfigError(f"{keyword.arg}: expected a literal value") from None


def parse_command(command: str) -> tuple[Config, Path]:
    """(normalized config, model path) of a command in any of ``FORMATS``."""
    text = command.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return normalize(data["config"]), Path(data["model"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not an autotune JSON config: {exc}") from None
    if text.startswith(("import ", "from ")):
        return _parse_python(text)
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"cannot split the command: {exc}") from None
    tool = Path(argv[0]).name if argv else ""
    if tool.startswith("llama-server"):
        return _parse_argv(argv, _SERVER_VALUES, _SERVER_SWITCHES, "llama-server")
    if tool.startswith("llama-bench"):
        return _parse_argv(argv, _BENCH_VALUES, {}, "llama-bench")
    raise ConfigError("not a llama-server, llama-bench, Python (llama_cpp) or JSON command")

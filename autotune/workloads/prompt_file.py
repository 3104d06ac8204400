"""A workload's prompts as the user writes them: a JSONL file, one request a line.

A line is ``{"prompt": "text"}`` (sent as it is) or ``{"messages": [{"role": ..., "content":
...}, ...]}`` (a chat, rendered by the model's chat template as ``autotune serve`` renders
``/v1/chat/completions``); other keys are ignored, blank lines skipped. A line
``{"trace": "FILE"}`` names a recorded routing trace of these prompts (relative to the JSONL's
folder), as ``--workload-trace FILE`` does. The built-in set (``default.jsonl`` beside this
module) mixes chat, code and prose of different lengths.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError

BUILT_IN = "built-in"
DIGEST_CHARS = 16


@dataclass(frozen=True)
class PromptSet:
    """Validated prompts of one file; ``lines``: each entry's line number in it."""

    name: str  # the file's name, or "built-in"
    digest: str  # sha256 of the file, its first DIGEST_CHARS hex digits: which prompts a winner was tuned on
    entries: tuple[dict[str, Any], ...]  # {"prompt": str} or {"messages": [...]}
    lines: tuple[int, ...]
    trace: str | None = None  # the routing trace's absolute path


def _entry(data: Any, where: str) -> dict[str, Any] | None:
    """The request a line holds (None for a trace line)."""
    if not isinstance(data, dict):
        raise AutotuneError(f'{where}: expected a JSON object with "prompt" or "messages"')
    if "prompt" in data:
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            raise AutotuneError(f'{where}: "prompt" must be a non-empty string')
        return {"prompt": data["prompt"]}
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise AutotuneError(f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}}')
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    if set(data) == {"trace"}:
        return None
    raise AutotuneError(f'{where}: a line needs "prompt" (text) or "messages" (a chat)')


def _trace_path(named: list[tuple[str, str]], option: Path | None, folder: Path) -> Path | None:
    """The one routing trace named by a line or the option (relative lines: to the file's folder)."""
    if len(named) + (option is not None) > 1:
        raise AutotuneError("a workload has one routing trace: name it once (a \"trace\" line or --workload-trace)")
    if option is not None:
        path, where = option, "--workload-trace"
    elif named:
        where, text = named[0]
        if not isinstance(text, str) or not text:
            raise AutotuneError(f'{where}: "trace" must be a file name')
        path = folder / text
    else:
        return None
    if not path.is_file():
        raise AutotuneError(f"{where}: routing trace {path}: no such file")
    return path.resolve()


def parse_prompts(text: str, source: str, folder: Path,
                  trace: Path | None = None) -> tuple[list[dict[str, Any]], list[int], Path | None]:
    """The entries of a JSONL text, their line numbers, and its routing trace."""
    entries, lines, traces = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AutotuneError(f"{where}: not JSON ({exc.msg}); a workload is JSONL, one object a line") from None
        entry = _entry(data, where)
        if entry is None:
            traces.append((where, data["trace"]))
        else:
            entries.append(entry)
            lines.append(number)
    if not entries:
        raise AutotuneError(f"{source} holds no prompts")
    return entries, lines, _trace_path(traces, trace, folder)


def read_prompt_file(path: Path, trace: Path | None = None) -> PromptSet:
    """The prompts of ``--workload FILE`` (and ``--workload-trace``), validated."""
    source = f"--workload {path}"
    if not path.is_file():
        raise AutotuneError(f"{source}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AutotuneError(f"{source}: not UTF-8 text; a workload is JSONL, one object a line") from None
    entries, lines, trace_path = parse_prompts(text, source, path.parent, trace)
    return PromptSet(path.name, _digest(data), tuple(entries), tuple(lines), str(trace_path) if trace_path else None)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def builtin_prompts() -> PromptSet:
    """The built-in set: chat, code and prose of different lengths."""
    resource = resources.files(__package__).joinpath("default.jsonl")
    text = resource.read_text(encoding="utf-8")
    entries, lines, _ = parse_prompts(text, BUILT_IN, Path("."))
    return PromptSet(BUILT_IN, _digest(text.encode()), tuple(entries), tuple(lines))


def prompts_digest(workload: str) -> str:
    """The digest of ``--workload FILE`` (or ``built-in``) as a stored winner records it."""
    return builtin_prompts().digest if workload == BUILT_IN else read_prompt_file(Path(workload)).digest

"""Whether llama.cpp can load a GGUF at all (its architecture, its vocabulary): a
vocabulary-only load in a child process, so the parent never imports llama_cpp. Also the
child's target (``setup`` loads, ``run`` has nothing left to do)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from autotune.isolation.trial_process import run_isolated

TARGET = "autotune.backends.llama_cpp.arch"
DEADLINE_S = 120.0
_UNKNOWN_ARCH = re.compile(r"unknown model architecture: '([^']*)'")


def setup(common: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(os.fsencode(common["model_path"]), params)
    if not model:
        raise RuntimeError("llama.cpp could not load the model")
    llama_cpp.llama_model_free(model)
    return None, {}


def run(state: None, item: dict[str, Any]) -> dict[str, Any]:
    return {}


def load_problem(model_path: Path | str) -> str | None:
    """None when llama.cpp loads the model's header and vocabulary, else why not (one line)."""
    [result] = run_isolated(TARGET, {"model_path": str(model_path)}, [{}], DEADLINE_S)
    if result.ok:
        return None
    unknown = _UNKNOWN_ARCH.search(result.message)
    if unknown:
        return f"llama.cpp does not support the architecture {unknown.group(1)!r}"
    lines = [line for line in result.message.splitlines() if "error" in line.lower() or "failed" in line.lower()]
    return "llama.cpp cannot load it: " + (lines[0] if lines else result.message.splitlines()[-1]).strip()

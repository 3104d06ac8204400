"""One module per model family, found by the GGUF's ``general.architecture``.

A family module holds what llama.cpp fixes for the architecture (``ArchTraits``) and its
forward pass, written in plain PyTorch against ``ops.Ops`` from the shared ``blocks``. A
family the runtime knows but cannot run yet is a ``PlannedFamily`` that says what it lacks.
Adding a family: a module here with its ``FAMILY``, listed in ``FAMILIES``.
"""

from __future__ import annotations

from pathlib import Path

from autotune.cache_runtime.families import deepseek2, glm4moe, gpt_oss, llama, olmoe, qwen2moe, qwen3moe
from autotune.cache_runtime.families.family import ArchTraits, Family, PlannedFamily
from autotune.errors import ModelFileError

__all__ = ["ArchTraits", "FAMILIES", "Family", "PlannedFamily", "family_for"]

FAMILIES: dict[str, Family | PlannedFamily] = {
    f.arch: f for f in (qwen3moe.FAMILY, qwen2moe.FAMILY, glm4moe.FAMILY, deepseek2.FAMILY, gpt_oss.FAMILY,
                       olmoe.FAMILY, llama.FAMILY)}


def family_for(arch: str | None, path: str | Path) -> Family:
    """The family of ``arch`` (the GGUF at ``path``'s architecture); raises for one the runtime
    does not know or cannot run yet."""
    family = FAMILIES.get(arch)
    if family is None:
        raise ModelFileError(f"{path}: the runtime does not know architecture {arch!r}")
    if isinstance(family, PlannedFamily):
        raise ModelFileError(f"{path}: {arch} needs {family.missing}, not implemented yet")
    return family

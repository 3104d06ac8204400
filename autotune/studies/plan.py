"""The parts of a study and their names: model variant x cap x {baselines, tuner per backend},
and one grid per variant (measured once, against the largest cap; the report filters it by cap).

Part names are file names in ``results/``: ``skew1-12G-baselines``, ``skew1-12G-tuner-llama_bench``,
``skew1-grid`` (a study of a GGUF file has the variant ``model``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autotune.studies.definition import StudyDefinition

KINDS = ("baselines", "tuner", "grid")


@dataclass(frozen=True)
class Variant:
    name: str
    skew: float | None  # None: the model is a file, not synthesized


@dataclass(frozen=True)
class Part:
    name: str
    kind: str
    variant: Variant
    cap: int | None  # None for the grid (it serves every cap)
    backend: str


def cap_label(cap: int) -> str:
    """``16G``, ``523M``: the cap as a short size that ``parse_size`` reads back exactly."""
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if cap % size == 0:
            return f"{cap // size}{unit}"
    return str(cap)


def variants(definition: StudyDefinition) -> list[Variant]:
    if definition.model.preset is None:
        return [Variant("model", None)]
    return [Variant(f"skew{skew:g}", skew) for skew in definition.model.skews]


def plan(definition: StudyDefinition) -> list[Part]:
    """Every part, in the order they run: per variant, each cap's baselines and tuners (caps in the
    definition's order), then its grid."""
    parts: list[Part] = []
    for variant in variants(definition):
        for cap in definition.cap_order:
            prefix = f"{variant.name}-{cap_label(cap)}"
            if definition.baselines is not None:
                parts.append(Part(f"{prefix}-baselines", "baselines", variant, cap, definition.baselines.backend))
            for backend in definition.backends:
                label = re.sub(r"[^A-Za-z0-9_.-]+", "_", backend)  # a plugin spec names a module and class
                parts.append(Part(f"{prefix}-tuner-{label}", "tuner", variant, cap, backend))
        if definition.grid is not None:
            parts.append(Part(f"{variant.name}-grid", "grid", variant, None, definition.grid.backend))
    return parts

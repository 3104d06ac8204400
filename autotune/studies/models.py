"""Each variant's model file (a preset synthesized once into a models directory, or the study's
GGUF) and how results name it: by file name and fingerprint, never by this machine's paths."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import platformdirs
from rich.console import Console

from autotune.errors import AutotuneError
from autotune.model_info import ModelProfile
from autotune.studies.definition import StudyDefinition
from autotune.studies.plan import Variant


def default_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("autotune", appauthor=False)) / "models"


def routing_of(definition: StudyDefinition) -> str:
    """The synthesized preset's routing mode: the definition's, else the preset's default."""
    from autotune.synth.presets import get_preset
    from autotune.synth.writer import default_routing

    spec = definition.model
    return spec.routing or default_routing(get_preset(spec.preset))


def model_file(definition: StudyDefinition, variant: Variant, models_dir: Path) -> Path:
    spec = definition.model
    if spec.path is not None:
        return spec.path
    return models_dir / f"{spec.preset}-{spec.quant}-{routing_of(definition)}-skew{variant.skew:g}-seed{spec.seed}.gguf"


def synth_command(definition: StudyDefinition, variant: Variant) -> str | None:
    """The command that writes this variant's model (None for a study of a GGUF file)."""
    spec = definition.model
    if spec.preset is None:
        return None
    name = model_file(definition, variant, Path()).name
    return shlex.join(["autotune", "synth", name, "--preset", spec.preset, "--quant", spec.quant,
                       "--routing", routing_of(definition), "--skew", f"{variant.skew:g}", "--seed", str(spec.seed), "--no-measure"])


def ensure_model(definition: StudyDefinition, variant: Variant, models_dir: Path, console: Console) -> Path:
    """The variant's model file, synthesized first when it is not there yet."""
    path = model_file(definition, variant, models_dir)
    if path.is_file():
        return path
    if definition.model.preset is None:
        raise AutotuneError(f"{path}: no such model file")
    from autotune.synth import write_synthetic_model

    with console.status(f"writing the {definition.model.preset} model ({routing_of(definition)} routing, skew {variant.skew:g}) to {path} ..."):
        report = write_synthetic_model(path, preset=definition.model.preset, quant=definition.model.quant,
                                       skew=variant.skew or 0.0, seed=definition.model.seed,
                                       routing=routing_of(definition))
    console.print(f"wrote {path.name} in {report.seconds:.1f} s")
    return path


def describe_model(definition: StudyDefinition, variant: Variant, profile: ModelProfile) -> dict[str, Any]:
    spec = definition.model
    return {
        "file": Path(profile.path).name,
        "name": profile.name,
        "fingerprint": profile.fingerprint,
        "file_bytes": profile.file_bytes,
        "n_layers": profile.n_layers,
        "n_expert": profile.n_expert,
        "n_expert_used": profile.n_expert_used,
        "preset": spec.preset,
        "quant": spec.quant if spec.preset else None,
        "routing": routing_of(definition) if spec.preset else None,
        "skew": variant.skew,
        "seed": spec.seed if spec.preset else None,
        "synth_command": synth_command(definition, variant),
    }

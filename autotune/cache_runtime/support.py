"""Whether the runtime can run a model, and where it cannot, what it lacks, in one line
(torch-free: the tuner asks while choosing backends, ``autotune inspect`` for the user)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.cache_runtime.families import FAMILIES, PlannedFamily
from autotune.cache_runtime.runtime_types import RUNTIME_TYPES
from autotune.errors import ModelFileError

if TYPE_CHECKING:
    from autotune.model_info import ModelProfile

# the experts' gated activations ggml's CPU experts compute (``cpu_experts``; ``torch_ops.glu``)
CPU_ACTIVATIONS = ("silu", "swiglu_oai")


def runtime_gap(model: ModelProfile) -> str | None:
    """None where the runtime runs ``model``, else what is missing: the family (unknown, or
    known but lacking a part), kernels for its weight types, or a part of its header the
    runtime does not implement (``hparams.read_config``'s reasons)."""
    if not model.is_moe:
        return "a dense model has no routed experts: nothing to cache"
    gaps = []
    family = FAMILIES.get(model.architecture)
    if family is None:
        gaps.append(f"the runtime does not know architecture {model.architecture!r}")
    elif isinstance(family, PlannedFamily):
        gaps.append(f"the {model.architecture} family needs {family.missing}, not implemented yet")
    unsupported = [qtype for qtype in model.quant_types if qtype not in RUNTIME_TYPES]
    if unsupported:
        gaps.append(f"the runtime has no kernels for GGML type {', '.join(unsupported)} "
                    f"(it reads {', '.join(RUNTIME_TYPES)})")
    if not gaps:
        from autotune.cache_runtime.budget import model_sizes

        try:
            model_sizes(model.path)
        except ModelFileError as exc:
            gaps.append(str(exc).removeprefix(f"{model.path}: "))
    return "; ".join(gaps) or None


def cpu_experts_gap(model: ModelProfile) -> str | None:
    """None where ggml's CPU experts (``cpu_experts``: gate and up, their gated activation, down,
    each with its per-expert bias where the file has one) compute the model's routed experts, so
    the miss modes ``cpu`` and ``auto`` can run; else why not (the engine refuses them so too)."""
    family = FAMILIES.get(model.architecture)
    if family is not None and family.traits.expert_act not in CPU_ACTIVATIONS:
        return f"{model.architecture}'s experts use the {family.traits.expert_act} activation"
    return None

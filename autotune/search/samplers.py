"""Optuna samplers by name. The default was chosen by measurement: see studies/sampler_choice."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from autotune.errors import AutotuneError

ConstraintsFunc = Callable[[FrozenTrial], Sequence[float]]
SAMPLERS = ("tpe", "tpe-independent", "gp", "random")


def check_sampler(name: str) -> None:
    """An AutotuneError unless ``name`` is one of ``SAMPLERS``."""
    if name not in SAMPLERS:
        raise AutotuneError(f"unknown sampler {name!r}; choose from: {', '.join(SAMPLERS)}")


def make_sampler(name: str, seed: int | None, constraints_func: ConstraintsFunc) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # group= is "experimental", constraints_func "deprecated" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _make_sampler(name, seed, constraints_func)


def _make_sampler(name: str, seed: int | None, constraints_func: ConstraintsFunc) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True, group=True, seed=seed, n_startup_trials=6, constraints_func=constraints_func
        )
    if name == "tpe-independent":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, constraints_func=constraints_func)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=6, constraints_func=constraints_func)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    check_sampler(name)
    raise AssertionError(f"sampler {name!r} is listed but not made")

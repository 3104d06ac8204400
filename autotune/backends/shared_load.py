"""Backends whose trial child loads the model once for every config that shares a load.

Both built-in runtimes fix some knobs when they load a model (llama.cpp: layers offloaded,
mmap, the context; the expert cache: the KV cache's length) and can measure any number of
configs equal in those knobs after one load. ``SharedLoadBackend`` measures a batch of configs
that way (``isolation.trial_process.run_in_load_groups``): a backend says which module its
child runs (``trial_target``), which knob is its context size, how it normalizes a config and
what the child's setup needs (``load_job``); the tuner batches siblings by ``load_keys``.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from autotune.backends.base import Backend, Config, ConfigError, TrialResult, Workload
from autotune.isolation.trial_process import run_in_load_groups


class SharedLoadBackend(Backend):
    """A ``Backend`` that measures configs equal in ``load_keys`` in one child."""

    trial_target: ClassVar[str]
    """The module the trial child runs (``isolation.child_main``'s protocol: setup, then run)."""
    context_key: ClassVar[str]
    """The config's context-size knob, set from the workload where a config leaves it out."""

    @abc.abstractmethod
    def normalize(self, config: Config) -> Config:
        """The config in canonical form (every knob present), or a ``ConfigError``."""

    @abc.abstractmethod
    def load_job(self, config: Config, model_path: Path) -> dict[str, Any]:
        """What the child's setup needs to load the model for this config (and its siblings)."""

    def trial_item(self, config: Config, model_path: Path, workload: Workload) -> dict[str, Any]:
        """What the child measures for one config. Default: the config and the workload's inputs."""
        return {"config": config, "workload": workload.trial_inputs()}

    def trial_config(self, config: Config, workload: Workload) -> Config:
        """The normalized config a trial runs: the workload's context unless the config sets one,
        which must hold the longest request measured."""
        config = self.normalize({self.context_key: workload.n_ctx, **config})
        if config[self.context_key] < workload.tokens_needed:
            raise ConfigError(f"{self.context_key} {config[self.context_key]} is smaller than the "
                              f"{workload.tokens_needed} prompt and generated tokens of the longest request measured")
        return config

    def run_trials(
        self, configs: list[Config], model_path: Path, workload: Workload, deadline_s: float
    ) -> list[TrialResult]:
        """One result per config, in order. Configs equal in ``load_keys`` share a child (one
        model load); ``deadline_s`` bounds the load and each config's measurement."""
        normalized = [self.trial_config(config, workload) for config in configs]
        return run_in_load_groups(
            self.trial_target, normalized, lambda c: {key: c[key] for key in self.load_keys or () if key in c},
            lambda c: self.load_job(c, model_path), lambda c: self.trial_item(c, model_path, workload),
            deadline_s, gpu=self.gpu)

    def run_trial(self, config: Config, model_path: Path, workload: Workload, deadline_s: float) -> TrialResult:
        return self.run_trials([config], model_path, workload, deadline_s)[0]

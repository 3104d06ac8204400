"""The ``cache`` backend: autotune's own runtime with its expert cache, every trial in a child.

Knobs: the table ``cache_runtime.cache_config.CACHE_KNOBS``, canonical configs: ``knobs``;
measurement (child side): ``trial``; launch commands (``autotune serve ...``): ``commands``; peak VRAM:
``cache_runtime.budget``, which needs no torch. The runtime fills whatever VRAM budget it is
given with expert slots, so the budget is not searched: the tuner hands each sampled config
the study's cap (``fill_cap``). Configs with the same context size share one model load
(the child re-configures the cache between them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.backends.base import Config, Workload
from autotune.backends.shared_load import SharedLoadBackend
from autotune.backends.cache.commands import format_command, parse_command
from autotune.backends.cache.knobs import DEFAULTS, cache_config, normalize
from autotune.backends.cache.winner_placement import keep_winner, restore_winner, with_trial_placement
from autotune.cache_runtime.cache_config import CACHE_KNOBS, CPU_MISS_MODES
from autotune.cache_runtime.support import cpu_experts_gap
from autotune.errors import AutotuneError, ModelFileError

if TYPE_CHECKING:
    import optuna

    from autotune.hardware import HardwareProfile
    from autotune.model_info import ModelProfile

LOAD_KEYS = ("max_ctx",)  # what the child fixes at load: the KV cache's size


class CacheBackend(SharedLoadBackend):
    name = "cache"
    trial_target = "autotune.backends.cache.trial"
    default_format = "serve"
    served_format = "serve"
    load_keys = LOAD_KEYS
    context_key = "max_ctx"
    fills_budget = True
    # Launch shapes of the Triton decode kernels: without a GPU the runtime runs its torch ops.
    gpu_only_knobs = CACHE_KNOBS.gpu_only

    def available(self) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed (pip install 'autotune[runtime]')"
        return None

    def supports(self, model: ModelProfile) -> str | None:
        """Mixture-of-experts models of a family and weight types the runtime implements
        (``support.runtime_gap``)."""
        from autotune.cache_runtime.support import runtime_gap

        return runtime_gap(model)

    # -- the search space --------------------------------------------------------

    def suggest(
        self, trial: optuna.Trial, model: ModelProfile, hw: HardwareProfile, workload: Workload | None = None
    ) -> Config:
        """The knobs ``CACHE_KNOBS`` searches, the decode launch shapes included; knobs a choice
        makes moot are not sampled (``normalize`` fixes them), nor the prefill bypass for the
        decode objective, nor a CPU miss mode for experts ggml's CPU path cannot compute
        (``support.cpu_experts_gap``). ``vram_cap`` comes from ``fill_cap``; the context size from
        the workload."""
        without = {"miss_mode": CPU_MISS_MODES} if cpu_experts_gap(model) else None
        config = CACHE_KNOBS.suggest(trial, workload.objective if workload is not None else None, without)
        if workload is not None:
            config["max_ctx"] = workload.n_ctx
        return config

    def fill_cap(self, config: Config, vram_cap: int) -> Config:
        """The config with the VRAM budget the runtime fills: the tuner passes the study's cap,
        less what this machine measured above the budget's predictions."""
        return normalize({**config, "vram_cap": vram_cap})

    def baselines(
        self, model: ModelProfile, hw: HardwareProfile, vram_cap: int, workload: Workload | None = None
    ) -> list[Config]:
        """Misses read zero-copy, and: static placement from the learned counts, without and
        with prefetch two layers ahead; LFU with decay rebalancing every 16 tokens with prefetch
        three layers ahead by SM copies (studies/expert_cache's best at 16 GiB, runs 6 and 7)
        and four ahead by the DMA engines (its best at 12 GiB, run 7); and every miss computed
        on the CPU under LFU rebalancing every 4 tokens with decay 0.8, the slots following each
        request's routing (models far larger than the cap: studies/hybrid's policy simulation),
        with the prefill's room lent to slots between prefills (studies/hybrid, call 4: hits
        0.83 -> 0.87, decode +15%), its slots spread over every layer; and for flat routing, where
        a few misses in every layer cost the CPU a call each, whole layers held in static slots,
        the CPU computing the others' experts but the 3 of 8 the GPU reads over PCIe meanwhile
        (studies/hybrid, call 16: +25-28% over the CPU alone at 8 and 16 GiB)."""
        common: Config = {"vram_cap": vram_cap, "miss_mode": "zero_copy"}
        if workload is not None:
            common["max_ctx"] = workload.n_ctx
        lfu16: Config = {"eviction": "lfu_decay", "rebalance_interval": 16}
        configs = [{"eviction": "static", "prefetch_depth": 0}, {"eviction": "static", "prefetch_depth": 2},
                   {**lfu16, "prefetch_depth": 3, "prefetch_engine": "sm"},
                   {**lfu16, "prefetch_depth": 4, "prefetch_engine": "dma"},
                   {"eviction": "lfu_decay", "rebalance_interval": 4, "decay": 0.8, "prefetch_depth": 0,
                    "miss_mode": "cpu", "lend_prefill_room": True},
                   {"eviction": "static", "miss_mode": "cpu", "lend_prefill_room": True, "slot_layout": "whole_layers",
                    "pcie_share": 0.375}]
        configs = [{**common, **config} for config in configs
                   if config.get("miss_mode") not in CPU_MISS_MODES or not cpu_experts_gap(model)]
        return [normalize(config) for config in configs]

    def defaults(
        self, model: ModelProfile, hw: HardwareProfile, workload: Workload, config: Config | None = None
    ) -> Config:
        """``CacheConfig``'s defaults at the workload's context. Given a config, its budget
        (``vram_cap``: the study's cap, not a knob) and what its eviction rule makes of the other
        knobs' defaults (static eviction never rebalances)."""
        defaults = {**DEFAULTS, "max_ctx": workload.n_ctx}
        if config is None or "vram_cap" not in config:
            return defaults
        eviction = config.get("eviction", DEFAULTS["eviction"])
        ruled = normalize({**defaults, "vram_cap": config["vram_cap"], "eviction": eviction})
        return {**ruled, "eviction": DEFAULTS["eviction"]}

    def predict_vram(self, config: Config, model: ModelProfile, workload: Workload) -> int:
        """The runtime's own plan; where the budget cannot hold even zero expert slots, the
        need with zero slots (over the cap: the tuner prunes the config)."""
        from autotune.cache_runtime.budget import model_sizes, plan_with_slots, predict_peak_vram

        cfg = cache_config(with_trial_placement({"max_ctx": workload.n_ctx, **config}, model.fingerprint))
        try:
            return predict_peak_vram(model.path, cfg)
        except ModelFileError:
            raise
        except AutotuneError:
            return plan_with_slots(model_sizes(model.path), cfg, 0).peak

    # -- measuring ---------------------------------------------------------------

    def normalize(self, config: Config) -> Config:
        return normalize(config)

    def load_job(self, config: Config, model_path: Path) -> dict[str, Any]:
        return {"model_path": str(model_path), "config": config}

    # -- the winner --------------------------------------------------------------

    def keep_winner(self, config: Config, model: ModelProfile, study_name: str) -> tuple[Config, dict[str, Any]]:
        """The winner names a placement file of its own holding the counts its trials seeded
        from (``cache_placement``); the database keeps the counts too."""
        from autotune.cache_runtime.budget import model_sizes

        sizes = model_sizes(model.path)  # the counts' shape: MoE layers only
        return keep_winner(config, model.fingerprint, (sizes.n_layers, sizes.n_expert), study_name)

    def restore_winner(self, config: Config, kept: dict[str, Any]) -> None:
        restore_winner(config, kept)

    # -- launching ---------------------------------------------------------------

    def launch_command(self, config: Config, model_path: Path, fmt: str | None = None) -> str:
        return format_command(config, model_path, fmt or self.default_format)

    def parse_command(self, command: str) -> tuple[Config, Path]:
        return parse_command(command)

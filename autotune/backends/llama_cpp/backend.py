"""The ``llama_cpp`` backend: llama.cpp through llama-cpp-python, every trial in a child process.

Knobs and config: ``llama_config``; measurement (child side): ``llama_cpp_trial``; memory
model: ``llama_memory``; launch commands: ``commands``. This module never imports llama_cpp.
Configs that share what llama.cpp fixes at load time (``llama_config.LOAD_KEYS``) can be
measured by one child that loads the model once: ``run_trials``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.backends.base import Config, Workload
from autotune.backends.shared_load import SharedLoadBackend
from autotune.backends.llama_cpp.commands import format_command, parse_command
from autotune.backends.llama_cpp.arch import load_problem
from autotune.backends.llama_cpp.knobs import DEFAULTS, KV_TYPES, LOAD_KEYS, cpu_expert_patterns, normalize
from autotune.backends.llama_cpp.vram_model import estimate_vram

if TYPE_CHECKING:
    import optuna

    from autotune.hardware import HardwareProfile
    from autotune.model_info import ModelProfile

BATCH_SIZES = [512, 1024, 2048, 4096]
UBATCH_SIZES = [128, 256, 512, 1024, 2048]


def thread_counts(hw: HardwareProfile) -> list[int]:
    """Thread counts worth measuring: fractions of the physical cores, all of them, and all
    logical CPUs. Neighbouring counts (15 vs 16) differ by less than the measurement noise,
    so a finer grid only spends a short budget on noise."""
    physical = max(1, hw.physical_cores)
    counts = {max(1, physical * share // 4) for share in (1, 2, 3, 4)} | {max(1, hw.logical_cores)}
    return sorted(counts)


class LlamaCppBackend(SharedLoadBackend):
    name = "llama_cpp"
    trial_target = "autotune.backends.llama_cpp.trial"
    default_format = "llama-server"
    served_format = "llama-server"
    load_keys = LOAD_KEYS
    context_key = "n_ctx"
    # Without a GPU, llama.cpp has no device to offload to: n_gpu_layers places layers on none,
    # and the experts that n_cpu_moe or cpu_moe_layers keep "on the CPU" are in the CPU's
    # buffers anyway (the same repacked ones: since b6049 an override to the CPU buffer type
    # considers its extra buffer types too); op_offload only sends host weights' ops to a GPU.
    # flash_attn is not one of them: the CPU backend has a flash-attention kernel of its own,
    # so it changes CPU speed (and a quantized V cache needs it).
    gpu_only_knobs = ("n_gpu_layers", "n_cpu_moe", "cpu_moe_layers", "op_offload")

    def available(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed (pip install 'llama-cpp-python==0.3.36')"
        return None

    def supports(self, model: ModelProfile) -> str | None:
        """Whatever llama.cpp loads (checked by a vocabulary-only load in a child); on a dense
        model only layer offload (n_gpu_layers) is tuned."""
        return load_problem(model.path)

    # -- the search space --------------------------------------------------------

    def suggest(
        self, trial: optuna.Trial, model: ModelProfile, hw: HardwareProfile, workload: Workload | None = None
    ) -> Config:
        """Every knob but explicit per-layer placement: with llama.cpp's layer-by-layer
        execution the number of layers whose experts stay on the CPU is what matters.
        For the decode objective, knobs that only matter for prefill or rarely help decode
        stay at llama.cpp's defaults, so a short budget is spent where decode speed is decided;
        n_ubatch stays searched there because its compute buffer trades VRAM with experts.
        With a workload the config carries its n_ctx, so exported commands serve that context.
        Without a GPU the knobs that act only through one (``gpu_only_knobs``) are not searched:
        every layer stays on the CPU."""
        n_layers, gpu = model.n_layers, hw.has_gpu
        flash_attn = trial.suggest_categorical("flash_attn", [True, False])
        n_cpu_moe = self._suggest_n_cpu_moe(trial, model) if model.is_moe and gpu else 0
        n_threads = trial.suggest_categorical("n_threads", thread_counts(hw))
        if workload is not None and workload.objective == "decode":
            config = {
                "n_gpu_layers": (n_layers + 1 if model.is_moe else trial.suggest_int("n_gpu_layers", 0, n_layers + 1))
                if gpu else 0,
                "n_cpu_moe": n_cpu_moe,
                "flash_attn": flash_attn,
                "n_ubatch": trial.suggest_categorical("n_ubatch", UBATCH_SIZES),
                "n_threads": n_threads,
                "n_threads_batch": n_threads,
            }
        else:
            n_batch = trial.suggest_categorical("n_batch", BATCH_SIZES)
            config = {
                "n_gpu_layers": trial.suggest_int("n_gpu_layers", n_layers // 2 if model.is_moe else 0, n_layers + 1)
                if gpu else 0,
                "n_cpu_moe": n_cpu_moe,
                "flash_attn": flash_attn,
                "n_batch": n_batch,
                "n_ubatch": min(n_batch, trial.suggest_categorical("n_ubatch", UBATCH_SIZES)),
                "type_k": trial.suggest_categorical("type_k", list(KV_TYPES)),
                "type_v": trial.suggest_categorical("type_v", list(KV_TYPES)) if flash_attn else "f16",
                "n_threads": n_threads,
                "n_threads_batch": trial.suggest_categorical("n_threads_batch", thread_counts(hw)),
                "op_offload": trial.suggest_categorical("op_offload", [True, False]) if gpu else DEFAULTS["op_offload"],
                "use_mmap": trial.suggest_categorical("use_mmap", [True, False]),
            }
        if workload is not None:
            config["n_ctx"] = workload.n_ctx
        return normalize(config)

    def baselines(
        self, model: ModelProfile, hw: HardwareProfile, vram_cap: int, workload: Workload | None = None
    ) -> list[Config]:
        """All experts on the CPU; the fewest first layers' experts on the CPU that fit the cap
        (the largest split a --n-cpu-moe user would find), and where a smaller ubatch (a smaller
        compute buffer) lets fewer layers' experts fit, that split too, with the largest such
        ubatch; llama.cpp's defaults, all on the GPU. Without a GPU: llama.cpp's defaults, every
        layer on the CPU."""
        common = {"n_gpu_layers": model.n_layers + 1 if hw.has_gpu else 0, "n_threads": hw.physical_cores,
                  "n_threads_batch": hw.physical_cores}
        if workload is not None:
            common["n_ctx"] = workload.n_ctx
        configs = []
        if hw.has_gpu and model.is_moe:
            configs.append({**common, "n_cpu_moe": model.n_layers})
            splits = [self._fewest_cpu_expert_layers({**common, "n_ubatch": ubatch}, model, vram_cap, workload)
                      for ubatch in sorted(UBATCH_SIZES, reverse=True) if ubatch <= DEFAULTS["n_ubatch"]]
            if splits[0] is not None:
                configs.append(splits[0])
            fewest = min((split for split in splits if split is not None), key=lambda c: c["n_cpu_moe"], default=None)
            if fewest is not None:
                configs.append(fewest)
        elif hw.has_gpu:  # dense: every layer on the CPU, and the most layers on the GPU that fit
            configs.append({**common, "n_gpu_layers": 0})
            fits = [n for n in range(model.n_layers + 1, -1, -1)
                    if self.predict_vram({**common, "n_gpu_layers": n}, model, workload or Workload()) <= vram_cap]
            if fits:
                configs.append({**common, "n_gpu_layers": fits[0]})
        configs.append(common)
        unique = {json.dumps(normalize(c), sort_keys=True): normalize(c) for c in configs}
        return list(unique.values())

    def defaults(
        self, model: ModelProfile, hw: HardwareProfile, workload: Workload, config: Config | None = None
    ) -> Config:
        """llama.cpp's defaults (``llama_config.DEFAULTS``): every layer on the GPU, the physical
        cores' threads, the workload's context; n_threads_batch follows the config's n_threads."""
        defaults = normalize({"n_gpu_layers": model.n_layers + 1, "n_threads": hw.physical_cores,
                              "n_ctx": workload.n_ctx})
        if config is not None and "n_threads" in config:
            defaults["n_threads_batch"] = config["n_threads"]
        return defaults

    @staticmethod
    def _suggest_n_cpu_moe(trial: optuna.Trial, model: ModelProfile) -> int:
        """``--n-cpu-moe N`` counts layers from 0, leading dense layers included, so every N up
        to their count keeps all experts on the GPU: the search starts at that count, which
        stands for 0, rather than spend trials on copies of one config."""
        n = trial.suggest_int("n_cpu_moe", model.n_dense_lead, model.n_layers)
        return 0 if n == model.n_dense_lead else n

    def _fewest_cpu_expert_layers(
        self, config: Config, model: ModelProfile, vram_cap: int, workload: Workload | None
    ) -> Config | None:
        """The config with the fewest first layers' experts on the CPU that fits the cap, or None."""
        for n_cpu_moe in range(model.n_layers + 1):
            candidate = {**config, "n_cpu_moe": n_cpu_moe}
            if self.predict_vram(candidate, model, workload or Workload()) <= vram_cap:
                return candidate
        return None

    def predict_vram(self, config: Config, model: ModelProfile, workload: Workload) -> int:
        return estimate_vram(normalize({"n_ctx": workload.n_ctx, **config}), model).total

    def expected_at_least_as_fast(self, a: Config, b: Config, workload: Workload) -> bool:
        """Prior knowledge the winner rule uses when measurements cannot tell two configs apart:
        ``a`` keeps fewer layers' experts on the CPU than ``b`` and is otherwise the same
        (batch sizes aside for decode, which runs one token at a time)."""
        a, b = normalize(a), normalize(b)
        ignored = {"n_cpu_moe"} | ({"n_batch", "n_ubatch"} if workload.objective == "decode" else set())
        same_otherwise = all(a.get(key) == b.get(key) for key in set(a) | set(b) if key not in ignored)
        explicit_layers = a.get("cpu_moe_layers") or b.get("cpu_moe_layers")
        return same_otherwise and not explicit_layers and a["n_cpu_moe"] < b["n_cpu_moe"]

    # -- measuring ---------------------------------------------------------------

    def normalize(self, config: Config) -> Config:
        return normalize(config)

    def load_job(self, config: Config, model_path: Path) -> dict[str, Any]:
        """What the child's setup needs: the load-time part of the config."""
        return {"model_path": str(model_path), "n_gpu_layers": config["n_gpu_layers"],
                "use_mmap": config["use_mmap"], "cpu_patterns": cpu_expert_patterns(config)}

    # -- launching ---------------------------------------------------------------

    def launch_command(self, config: Config, model_path: Path, fmt: str | None = None) -> str:
        return format_command(config, model_path, fmt or self.default_format)

    def parse_command(self, command: str) -> tuple[Config, Path]:
        return parse_command(command)

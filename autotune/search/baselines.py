"""Each backend's baselines (the configs it names as worth measuring first), queued for the cap
this machine's measurements allow, and queued again as those measurements move that cap.

Baselines wait here, not in the study's queue, until the study has none waiting (``feed``):
Optuna runs waiting trials first come, first served, so a split sized again after a
measurement over the cap would otherwise wait behind every other backend's baselines.

The memory model is calibrated from every measured peak of this study (and of the earlier
ones warm start copied): a backend's formula plus what this machine measured above it."""

from __future__ import annotations

from typing import Iterable

from optuna.trial import TrialState

from autotune.backends.base import Config

from autotune.search.records import TrialRecord
from autotune.search.study_context import StudyContext


def calibrate_from_study(context: StudyContext) -> None:
    """Add the measured peaks of this study's own complete trials to the calibration."""
    for trial in context.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(trial)
        if not record.measured_here:
            continue  # already counted by warm_start
        result = record.result
        if (result is not None and result.ok and result.peak_vram_bytes and record.backend is not None
                and record.predicted_vram_raw is not None):
            context.calibration.add(record.backend, record.predicted_vram_raw, result.peak_vram_bytes)


class Baselines:
    """Queues the backends' baselines, and again where they are outdated."""

    def __init__(self, context: StudyContext):
        self.context = context
        self._calibrated: set[str] = set()  # backends whose baselines were sized with a calibration
        self._caps: dict[str, int] = {}  # the cap each backend's baselines were last sized for
        self._held = False  # only the formula probes are queued yet (seed)
        self._pending: list[tuple[str, Config, str]] = []  # (backend, config, reason) not yet handed to the study

    def seed(self, probes_first: bool = True, names: Iterable[str] | None = None) -> None:
        """Queue the baselines of each backend (of ``names``, else all), sized for ``cap``
        (so "the largest split that fits" is what fits by this machine's measurements), in
        place of those it had pending. Configs already queued or tried are skipped (``feed``).

        While a backend's formula has no measured peak on this machine yet, only its first
        baseline (the probe) is queued, and everything else after the first measured trial:
        else the split the formula alone allows, and every other backend's baselines, would
        be queued before the split the calibrated formula allows (which a short budget may
        then never reach)."""
        context = self.context
        probes_only = probes_first and any(self._formula_uncalibrated(name) for name in context.backends)
        names = list(names or context.backends)
        fresh: list[tuple[str, Config, str]] = []
        for name in names:
            cap_for_formula = self.cap(name)
            configs = context.backends[name].baselines(context.model, context.hardware, cap_for_formula,
                                                       context.workload)
            if probes_only:
                configs = configs[:1] if self._formula_uncalibrated(name) else []
            calibrated = bool(context.calibration.residuals.get(name))
            reason = "baseline, memory model calibrated" if calibrated else "baseline"
            fresh += [(name, config, reason) for config in configs]
            if calibrated:
                self._calibrated.add(name)
            self._caps[name] = cap_for_formula
        others = [entry for entry in self._pending if entry[0] not in names]  # keep their sizes and order
        # baselines sized again by this machine's measurements go first; a first seeding keeps the order
        self._pending = others + fresh if probes_first or self._held else fresh + others
        self._held = probes_only

    def feed(self, batch: int) -> None:
        """With no trial waiting in the study, hand it the next pending baselines: up to
        ``batch`` in a row of one backend (so those that share a model load are measured in
        one). Those the study already has (queued or tried) are skipped."""
        study = self.context.study
        while self._pending and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            name = self._pending[0][0]
            run = 0
            while run < batch and self._pending and self._pending[0][0] == name:
                _, config, reason = self._pending.pop(0)
                self.context.enqueue(name, config, reason=reason)
                run += 1

    def cap(self, name: str) -> int:
        """The cap a backend's baselines are sized for. A runtime that fills the budget it is
        given gets the budget sampled configs get (never above the cap). A backend with a
        memory formula gets the cap less the largest error measured above its formula here,
        so no split measured over the cap is queued again: the next one that fits is."""
        if self.context.fills_budget(name):
            return self.context.budget(name)
        return self.context.vram_cap - self.context.calibration.largest(name)

    def _formula_uncalibrated(self, name: str) -> bool:
        """Whether the backend's baselines follow a memory formula not yet checked by a measurement."""
        return not self.context.fills_budget(name) and not self.context.calibration.residuals.get(name)

    def reseed_outdated(self) -> None:
        """After the first measured trial, the baselines held back. After a backend's first
        measured peak, its baselines sized without one. After a peak above a formula by more
        than any before (a split that fit by the formula, measured over the cap), that
        backend's baselines for the cap the formula now allows. A budget-filling runtime's
        budget follows every trial, so its baselines are sized again once only."""
        context = self.context
        measured = [name for name in context.backends if context.calibration.residuals.get(name)]
        outdated = [name for name in measured if name not in self._calibrated
                    or (not context.fills_budget(name) and self._caps.get(name) != self.cap(name))]
        if self._held or outdated:
            self.seed(probes_first=False, names=None if self._held else outdated)

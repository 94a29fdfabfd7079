"""Early stopping within groups (:func:`grouped_asha`): ASHA that compares trials only with their own ζ, source, target,
model and i_max."""

from __future__ import annotations

from typing import Any

from .config import SweepConfig
from .space import axes_of
from .trial import METRIC, MODE

#: The axes early stopping compares trials within: ε and p compete, the rest never.
GROUP_AXES = ("model", "source", "zeta", "target", "max_passes")


def grouped_asha(s: SweepConfig) -> Any:
    """ASHA (asynchronous successive halving), one bracket per group of :data:`GROUP_AXES`.

    Plain ASHA would compare every trial with every other, and stop the trials of a small ζ only because a larger
    budget fools more images; the paper picks ε and p per ζ (and per source, target and model), so do the rungs.
    Time is the natural images a trial has processed (``stream_images``); trials without a stream (the training
    images, the random control) are never stopped.
    """
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    runs, models = s.runs(), s.model_labels()

    class GroupedASHA(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self._metric: str | None = METRIC
            self._mode: str | None = MODE
            self.groups: dict[tuple[str, ...], AsyncHyperBandScheduler] = {}
            self.of: dict[str, AsyncHyperBandScheduler] = {}

        def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
            self._metric, self._mode = metric or self._metric, mode or self._mode
            return True

        def _scheduler(self, trial: Any) -> AsyncHyperBandScheduler:
            key = tuple(str(axes_of(trial.config, runs, models).get(k)) for k in GROUP_AXES)
            if key not in self.groups:
                self.groups[key] = AsyncHyperBandScheduler(
                    time_attr="stream_images", metric=self._metric, mode=self._mode, max_t=2**40,
                    grace_period=s.early_stop_grace, reduction_factor=s.early_stop_reduction)
            return self.groups[key]

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            self.of[trial.trial_id] = self._scheduler(trial)
            self.of[trial.trial_id].on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            return self.of[trial.trial_id].on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
            sched = self.of.pop(trial.trial_id, None)
            if sched is not None and "stream_images" in result:
                sched.on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
            self.of.pop(trial.trial_id, None)

        def debug_string(self) -> str:
            stopped = sum(g._num_stopped for g in self.groups.values())
            return f"GroupedASHA: {len(self.groups)} group(s), {stopped} trial(s) stopped early"

    return GroupedASHA()

"""Run (or resume) a sweep with Ray Tune (:func:`run_sweep`), count its trials' outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .asha import grouped_asha
from .config import SweepConfig
from .space import axes_of, param_space, trial_count
from .trial import METRIC, MODE, uap_trial


def _outcomes(sweep: str, runs: dict[str, dict[str, Any]], models: dict[str, str] | None = None) -> Any:
    """A Tune callback (in the sweep's driver) counting finished, stopped and failed trials as ``raylab_trials``.

    Tune pickles it with the experiment (cloudpickle), so a restored sweep keeps counting.
    """
    from ray import tune

    from ..telemetry import Telemetry, ray_sink, run_tags

    class TrialOutcomes(tune.Callback):
        def _done(self, trial: Any, status: str) -> None:
            c = axes_of(trial.config, runs, models)
            Telemetry(ray_sink(), **run_tags(out=trial.trial_id, source=c.get("source", ""), model=c.get("model", ""))
                      ).trial_done(sweep=sweep, status=status)  # type: ignore[arg-type]

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._done(trial, "finished" if "fooling_rate" in (trial.last_result or {}) else "stopped")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._done(trial, "failed")

    return TrialOutcomes()


def run_sweep(s: SweepConfig, *, log: Callable[[str], None] = print) -> Any:
    """Run (or resume) the sweep with Ray Tune; returns Tune's ResultGrid."""
    import ray
    from ray import tune

    from ..store import Store, guard_resume

    if not ray.is_initialized():
        ray.init()
    guard_resume(Store.at(s.storage).child(s.name), "raylab-sweep.json", s.identity(), what=f"sweep {s.name!r}",
                 hint="use a new --name, or the settings it was started with")
    runs = s.runs()
    trainable = tune.with_resources(tune.with_parameters(uap_trial, sweep=s),
                                    resources=lambda config: tune.PlacementGroupFactory(s.bundles(axes_of(config, runs)["source"])))
    path = f"{s.storage}/{s.name}"
    if tune.Tuner.can_restore(path):
        log(f"resuming sweep {s.name} from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(s),
            # reuse_actors: a trial whose placement group equals a finished one's runs in that trial's process, not
            # a new one (about 2 s less per trial on a 2-core CPU: process start, torch, Tune and the model's
            # imports; on a GPU node also the CUDA context). Every trial seeds its own generators, so its UAP is the
            # same either way.
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=s.num_samples if s.search == "random" else 1,
                                        max_concurrent_trials=s.max_concurrent or None, reuse_actors=True,
                                        scheduler=grouped_asha(s) if s.early_stop else None),
            run_config=tune.RunConfig(name=s.name, storage_path=s.storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=1), callbacks=[_outcomes(s.name, runs, s.model_labels())]),
        )
    return tuner.fit()


def outcome(result: Any) -> str:
    """How one of Tune's trial results ended: ``finished`` (it wrote its row: a test-set score), ``stopped`` by early
    stopping (Tune's ``done`` on its last stream report), ``failed``, or ``unfinished`` (running when the sweep was
    interrupted: Tune marks those terminated too, so their status does not tell them from finished ones)."""
    if result.error is not None:
        return "failed"
    metrics = result.metrics or {}
    if "fooling_rate" in metrics:
        return "finished"
    return "stopped" if metrics.get("done") is True else "unfinished"


@dataclass(frozen=True)
class Tally:
    """How a sweep's trials ended. ``unfinished``: running when the sweep was interrupted, or never started (Tune
    catches the first Ctrl-C, saves its state and returns as if done)."""

    total: int
    finished: int
    stopped: int
    failed: int

    @property
    def unfinished(self) -> int:
        return self.total - self.finished - self.stopped - self.failed


def tally(grid: Any, s: SweepConfig) -> Tally:
    """The :class:`Tally` of Tune's ResultGrid of sweep ``s``, each trial counted by its :func:`outcome`."""
    outcomes = [outcome(r) for r in grid]
    return Tally(total=trial_count(s), finished=outcomes.count("finished"), stopped=outcomes.count("stopped"),
                 failed=outcomes.count("failed"))

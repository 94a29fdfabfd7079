"""``raylab sweep``: Ray Tune grids over ε, p, ζ, UAP source, target, model and i_max.

The paper picked ε and p per dataset by grid search and swept ζ (2-16 %) for
every image source and architecture (Section 2.2). One trial is one UAP: the
engine (:mod:`raylab.engine`) for a shard source, the single-machine audit
for the medical training set or the random control. Each trial writes its row
into the results dataset (:mod:`raylab.results`) and reports R_f / R_s, the
random control, images/s and wall time to Tune. Trials declare their
resources (the trial, its workers and readers) as a placement group, so Tune
and the autoscaler can place them. An interrupted sweep resumes with Tune's
restore; finished trials are not redone and rewritten rows replace their own
file, so no row is duplicated.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import SOURCE_RANDOM, SOURCE_TRAIN, _check, _finite
from .core.norms import parse_norm
from .errors import InputError

SEARCHES = ("grid", "random")


def _absolute(location: str) -> str:
    """Tune runs trials in their own working directories: every local path is made absolute first."""
    return location if "://" in location or location in (SOURCE_TRAIN, SOURCE_RANDOM) else str(Path(location).resolve())


@dataclass(frozen=True)
class SweepConfig:
    """A grid (or random search) of UAP runs and where their results go."""

    name: str
    medical: str
    models: tuple[str, ...]
    sources: tuple[str, ...]
    eps: tuple[float, ...] = (0.0005,)
    p: tuple[str, ...] = ("2",)
    zeta: tuple[float, ...] = (0.04,)
    targets: tuple[str | None, ...] = (None,)
    max_passes: tuple[int, ...] = (1,)
    results: str = "runs/results"
    out: str = "runs/sweeps"
    search: str = "grid"
    num_samples: int = 1
    workers: int = 1
    batch_size: int = 32
    device: str = "cpu"
    amp: bool = False
    cpus_per_trial: float = 0.25
    cpus_per_worker: float = 1.0
    cpus_per_reader: float = 1.0
    max_concurrent: int = 0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), f"sweep name must be a plain name, got {self.name!r}")
        for axis in ("models", "sources", "eps", "p", "zeta", "targets", "max_passes"):
            _check(len(getattr(self, axis)) > 0, f"{axis}: give at least one value")
        for e in self.eps:
            _finite("eps", e)
            _check(e > 0, f"eps must be > 0, got {e}")
        for z in self.zeta:
            _finite("zeta", z)
            _check(0 < z <= 1, f"zeta must be in (0, 1] (a ratio, e.g. 0.04 for 4%), got {z}")
        for p in self.p:
            try:
                parse_norm(p)
            except ValueError as e:
                raise InputError(str(e)) from None
        for m in self.max_passes:
            _check(m >= 1, f"max_passes (i_max) must be >= 1, got {m}")
        _check(self.search in SEARCHES, f"search must be one of {SEARCHES}, got {self.search!r}")
        _check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _check(self.workers >= 1 and self.batch_size >= 1, "workers and batch_size must be >= 1")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for m in self.models:
            _check("://" in m or Path(m).is_file(), f"model weights not found: {m}")
        _check(Path(self.medical).exists(), f"medical dataset not found: {self.medical}")
        for s in self.sources:
            if s not in (SOURCE_TRAIN, SOURCE_RANDOM) and "://" not in s:
                _check((Path(s) / "manifest.json").is_file(),
                       f"UAP source {s!r}: not 'train', 'random' or a shard location with a manifest.json (raylab shard)")
        object.__setattr__(self, "models", tuple(_absolute(m) for m in self.models))
        object.__setattr__(self, "sources", tuple(_absolute(s) for s in self.sources))
        object.__setattr__(self, "medical", _absolute(self.medical))
        object.__setattr__(self, "results", _absolute(self.results))
        object.__setattr__(self, "out", _absolute(self.out))

    @property
    def storage(self) -> str:
        """Where Tune keeps the experiment state that ``restore`` resumes from."""
        return f"{self.out}/tune"

    def bundles(self, source: str | None = None) -> list[dict[str, float]]:
        """The trial's placement group: the trial itself, then one bundle per worker and per reader."""
        gpu = 1.0 if self.device.startswith("cuda") else 0.0
        return ([{"CPU": self.cpus_per_trial}]
                + [{"CPU": self.cpus_per_worker, **({"GPU": gpu} if gpu else {})}] * self.workers
                + [{"CPU": self.cpus_per_reader}] * self.workers)


def _trial_result(metrics: dict[str, Any]) -> dict[str, Any]:
    target = metrics.get("target")
    return {
        "fooling_rate": metrics["fooling_rate"],
        "success_rate": metrics["success_rate"][target] if target else None,
        "random_fooling_rate": metrics["random"]["fooling_rate"],
        "random_success_rate": metrics["random"]["success_rate"][target] if target else None,
        "images_per_second": metrics.get("images_per_second"),
        "wall_seconds": metrics.get("wall_seconds"),
    }


def uap_trial(config: dict[str, Any]) -> None:
    """One Tune trial: one UAP with the config's ε, p, ζ, source, target, model and i_max; one results row."""
    from ray import tune

    from .audit import run_uap
    from .config import EngineConfig, UAPConfig
    from .engine import run_engine
    from .models import checkpoint_spec
    from .results import row_from_metrics, write_rows

    s = SweepConfig(**config["sweep"])
    trial_id = tune.get_context().get_trial_id()
    out = f"{s.out}/{s.name}/{trial_id}"
    started = time.perf_counter()
    common = dict(model=config["model"], p=config["p"], zeta=config["zeta"], eps=config["eps"],
                  max_passes=config["max_passes"], target=config["target"], batch_size=s.batch_size, seed=s.seed,
                  device=s.device, amp=s.amp, examples=4)
    source = config["source"]
    if source in (SOURCE_TRAIN, SOURCE_RANDOM):
        from .audit import run_tags
        from .telemetry import Telemetry, ray_sink

        Path(out).mkdir(parents=True, exist_ok=True)
        uap_config = UAPConfig(medical=Path(s.medical), source=source, out=Path(out), **{**common, "model": Path(config["model"])})
        metrics = run_uap(uap_config, progress=False, telemetry=Telemetry(ray_sink(), **run_tags(uap_config)))
    else:
        metrics = run_engine(EngineConfig(medical=Path(s.medical), shards=source, out=out, workers=s.workers,
                                          cpus_per_worker=s.cpus_per_worker, cpus_per_reader=s.cpus_per_reader,
                                          progress_every=60.0, **common), log=lambda line: print(line, flush=True))
    metrics["wall_seconds"] = time.perf_counter() - started
    spec = checkpoint_spec(config["model"])
    row = row_from_metrics(metrics, sweep=s.name, trial_id=trial_id, run_id=uuid.uuid4().hex[:12], uap_uri=f"{out}/uap.npy",
                           arch=spec.arch if spec else "", image_size=spec.image_size if spec and spec.image_size else 0)
    row["wall_seconds"] = metrics["wall_seconds"]
    write_rows(s.results, [row])
    tune.report(_trial_result(metrics))


def param_space(s: SweepConfig) -> dict[str, Any]:
    from ray import tune

    axes = {"model": list(s.models), "source": list(s.sources), "eps": list(s.eps), "p": list(s.p), "zeta": list(s.zeta),
            "target": list(s.targets), "max_passes": list(s.max_passes)}
    pick = tune.grid_search if s.search == "grid" else tune.choice
    return {"sweep": asdict(s), **{k: pick(v) for k, v in axes.items()}}


def _outcomes(sweep: str) -> Any:
    """A Tune callback (in the sweep's driver) counting finished and failed trials as ``raylab_trials``.

    Tune pickles it with the experiment (cloudpickle), so a restored sweep keeps counting.
    """
    from ray import tune

    from .telemetry import Telemetry, ray_sink

    class TrialOutcomes(tune.Callback):
        def _done(self, trial: Any, status: str) -> None:
            c = trial.config
            Telemetry(ray_sink(), run=trial.trial_id, source=Path(str(c.get("source", ""))).name,
                      model=Path(str(c.get("model", ""))).name).trial_done(sweep=sweep, status=status)  # type: ignore[arg-type]

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._done(trial, "finished")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._done(trial, "failed")

    return TrialOutcomes()


def run_sweep(s: SweepConfig, *, log: Callable[[str], None] = print) -> Any:
    """Run (or resume) the sweep with Ray Tune; returns Tune's ResultGrid."""
    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init()
    trainable = tune.with_resources(uap_trial, tune.PlacementGroupFactory(s.bundles()))
    path = f"{s.storage}/{s.name}"
    if tune.Tuner.can_restore(path):
        log(f"resuming sweep {s.name} from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(s),
            tune_config=tune.TuneConfig(num_samples=s.num_samples if s.search == "random" else 1,
                                        max_concurrent_trials=s.max_concurrent or None),
            run_config=tune.RunConfig(name=s.name, storage_path=s.storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=1), callbacks=[_outcomes(s.name)]),
        )
    return tuner.fit()

"""``raylab sweep``: Ray Tune grids over the UAP method, ε (lr), p, ζ, UAP source, target, model and i_max.

The paper picked ε and p per dataset by grid search and swept ζ (2-16 %) for
every image source and architecture (Section 2.2). One trial is one UAP, a
plain function (:func:`uap_trial`): the engine (:mod:`raylab.engine`) for a
shard source, the single-machine audit for the medical training set or the
random control. The sweep's fixed settings reach the trials through
``tune.with_parameters``; only the axes are Tune's search space. Each trial
declares its own resources (a placement group: the trial, plus a bundle per
engine worker and per reader for a shard source only), reports the running
rate over its natural-image stream every few rounds and its test-set rate at
the end (Tune's ``metric="score"``, ``mode="max"``), and writes its row into
the results dataset (:mod:`raylab.results`). ``early_stop`` stops trials whose
running rate trails the others' of the same ζ, source, target, model and i_max
(:class:`GroupedASHA`). An interrupted sweep resumes with Tune's restore;
finished trials are not redone, rewritten rows replace their own file, and a
rerun with other settings under the same name is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .config import (
    DEFAULT_MEDICAL, METHODS, SOURCE_RANDOM, SOURCE_TRAIN, AttackConfig, EngineConfig, check, check_device, check_seed,
    default_of, finite, norm, option,
)
from .record import ResultsKey, RunRecord

SEARCHES = ("grid", "random")
#: Tune's objective: the running rate on the stream while a trial runs, R_f (R_s) on the test set at its end.
METRIC, MODE = "score", "max"
#: The axes early stopping compares trials within: ε and p compete, the rest never.
GROUP_AXES = ("model", "source", "zeta", "target", "max_passes")
#: The fixed settings a resumed sweep may change (they decide where trials run, not what they compute).
RESUMABLE_CHANGES = frozenset({"max_concurrent", "cpus_per_trial", "cpus_per_worker", "cpus_per_reader"})


def _absolute(location: str) -> str:
    """Tune runs trials in their own working directories: every local path is made absolute first."""
    return location if "://" in location or location in (SOURCE_TRAIN, SOURCE_RANDOM) else str(Path(location).resolve())


def _target(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A grid (or random search) of UAP runs, its fixed settings, and where the results go."""

    name: str = option(help="sweep name (a partition of the results; rerun the same name to resume)")
    medical: str = option(str(DEFAULT_MEDICAL), "the medical dataset the models classify", flag="--data")
    models: tuple[str, ...] = option(help="classifier checkpoint(s)", flag="--model")
    sources: tuple[str, ...] = option(help="shard location(s), 'train' and/or 'random'", flag="--source")
    methods: tuple[str, ...] = option(("paper",), "UAP methods: paper (the paper's FGSM UAP) and/or sgd (stochastic "
                                                   "gradient ascent, stronger)", flag="--method", choices=METHODS)
    eps: tuple[float, ...] = option((default_of(AttackConfig, "eps"),), "paper: FGSM step sizes epsilon")
    lr: tuple[float, ...] = option((default_of(AttackConfig, "lr"),), "sgd: first steps, as fractions of the radius")
    p: tuple[str, ...] = option(("2",), "norms: 2 and/or inf")
    zeta: tuple[float, ...] = option((default_of(AttackConfig, "zeta"),), "budgets zeta (ratios of the mean image norm)")
    targets: tuple[str | None, ...] = option((None,), "target class names/indices; 'none' = non-targeted",
                                             flag="--target", parse=_target)
    max_passes: tuple[int | None, ...] = option((None,), "passes i_max (default: 1 for paper, 10 epochs for sgd)",
                                                flag="--i-max", parse=int)
    results: str = option("runs/results", "Parquet results location (path or fsspec URL)")
    out: str = option("runs/sweeps", "UAP artifacts and Tune's state (path or URL)")
    search: str = option("grid", "grid: every combination; random: num_samples draws", choices=SEARCHES)
    num_samples: int = option(1, "random search: trials to sample")
    workers: int = option(default_of(EngineConfig, "workers"), "engine workers per trial")
    batch_size: int = option(default_of(AttackConfig, "batch_size"), "images per update (per worker)")
    device: str = option(default_of(AttackConfig, "device"), "cpu or cuda")
    amp: bool = option(False, "mixed-precision forward passes")
    cpus_per_trial: float = option(0.25, "CPUs of the trial's own process (its driver)")
    cpus_per_worker: float = option(default_of(EngineConfig, "cpus_per_worker"), "CPUs each engine worker asks for")
    cpus_per_reader: float = option(default_of(EngineConfig, "cpus_per_reader"), "CPUs each engine reader asks for")
    max_concurrent: int = option(0, "trials at once (0: as many as fit)")
    seeds: tuple[int, ...] = option((default_of(AttackConfig, "seed"),), "seeds: every grid point runs once per seed "
                                    "(its image order, the random control's noise); results give mean ± sd over them")
    report_every: int = option(5, "engine rounds between a trial's reports to Tune (its running stream rate)")
    early_stop: bool = option(False, "stop trials whose running rate trails the others' of the same zeta, source, "
                                     "target, model and i_max (ASHA)")
    early_stop_grace: int = option(256, "natural images every trial sees before early stopping may stop it")
    early_stop_reduction: float = option(2.0, "ASHA's reduction factor: at each rung all but the top 1/factor stop")

    def __post_init__(self) -> None:
        check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
              f"sweep name must be a plain name, got {self.name!r}")
        for axis in ("models", "sources", "methods", "eps", "lr", "p", "zeta", "targets", "max_passes"):
            check(len(getattr(self, axis)) > 0, f"{axis}: give at least one value")
        for m in self.methods:
            check(m in METHODS, f"method must be one of {METHODS}, got {m!r}")
        for name in ("eps", "lr"):
            for v in getattr(self, name):
                finite(name, v)
                check(v > 0, f"{name} must be > 0, got {v}")
        for z in self.zeta:
            finite("zeta", z)
            check(0 < z <= 1, f"zeta must be in (0, 1] (a ratio, e.g. 0.04 for 4%), got {z}")
        for p in self.p:
            norm(p)
        for m in self.max_passes:
            check(m is None or m >= 1, f"max_passes (i_max) must be >= 1, got {m}")
        check(self.search in SEARCHES, f"search must be one of {SEARCHES}, got {self.search!r}")
        check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        check(self.workers >= 1 and self.batch_size >= 1, "workers and batch_size must be >= 1")
        for name in ("cpus_per_trial", "cpus_per_worker", "cpus_per_reader"):
            finite(name, getattr(self, name))
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        check(self.max_concurrent >= 0, f"max_concurrent must be >= 0 (0: as many as fit), got {self.max_concurrent}")
        check(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), f"give one or more distinct seeds, got {self.seeds}")
        for seed in self.seeds:
            check_seed(seed)
        check_device(self.device)
        check(self.report_every >= 1, f"report_every must be >= 1, got {self.report_every}")
        check(self.early_stop_grace >= 1, f"early_stop_grace must be >= 1, got {self.early_stop_grace}")
        check(self.early_stop_reduction > 1, f"early_stop_reduction must be > 1, got {self.early_stop_reduction}")
        for m in self.models:
            check("://" in m or Path(m).is_file(), f"model weights not found: {m}")
        check(Path(self.medical).exists(), f"medical dataset not found: {self.medical}")
        for s in self.sources:
            if s not in (SOURCE_TRAIN, SOURCE_RANDOM) and "://" not in s:
                check((Path(s) / "manifest.json").is_file(),
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

    def bundles(self, source: str) -> list[dict[str, float]]:
        """A trial's placement group: the trial itself, then (for a shard source) one bundle per worker and reader."""
        trial = [{"CPU": self.cpus_per_trial}]
        if source in (SOURCE_TRAIN, SOURCE_RANDOM):
            return trial  # the single-machine audit runs inside the trial
        gpu = {"GPU": 1.0} if self.device.startswith("cuda") else {}
        return trial + [{"CPU": self.cpus_per_worker, **gpu}] * self.workers + [{"CPU": self.cpus_per_reader}] * self.workers

    def largest_trial(self) -> tuple[float, float]:
        """The CPUs and GPUs of the largest trial's placement group (over the sources)."""
        return max((sum(b.get("CPU", 0.0) for b in bs), sum(b.get("GPU", 0.0) for b in bs))
                   for bs in (self.bundles(s) for s in self.sources))

    def runs(self) -> dict[str, dict[str, Any]]:
        """The sweep's runs by label: each UAP source with each method's own steps (``{"method": "paper", "eps": ε}``
        per ε, ``{"method": "sgd", "lr": lr}`` per lr) and each i_max.

        The random control has no method, step or passes (its ρ is noise drawn from the seed), so it runs once per
        model, p, ζ, target and seed, with the first method's first step in its row, not once per step. A label names
        the source (``train``, ``random``; a shard location by its last path part, or its whole location where two
        share one, and not at all where it is the sweep's only one), the method and step, and i_max when given:
        ``paper eps=0.008``, ``sgd lr=1 i_max=5``, ``train paper eps=0.008``, ``random``; Tune's table shows 20
        characters.
        """
        streams = [src for src in self.sources if src not in (SOURCE_TRAIN, SOURCE_RANDOM)]
        short = {src: src.rstrip("/").rsplit("/", 1)[-1] for src in streams}
        names = {src: src if src in (SOURCE_TRAIN, SOURCE_RANDOM) else "" if len(streams) == 1
                 else short[src] if list(short.values()).count(short[src]) == 1 else src for src in self.sources}
        attacks = [{"method": m, **({"eps": e} if m == "paper" else {"lr": e})}
                   for m in self.methods for e in (self.eps if m == "paper" else self.lr)]
        out: dict[str, dict[str, Any]] = {}
        for src in self.sources:
            for a in attacks:
                for m in self.max_passes:
                    if src == SOURCE_RANDOM and (a is not attacks[0] or m != self.max_passes[0]):
                        continue
                    parts = [names[src]]
                    if src != SOURCE_RANDOM:
                        parts += [a["method"], *(f"{k}={v:.12g}" for k, v in a.items() if k != "method")]
                        parts += [f"i_max={m}"] if m is not None else []
                    label = " ".join(p for p in parts if p)
                    out[label] = {"source": src, "attack": a, "max_passes": m}
        return out

    def identity(self) -> dict[str, Any]:
        """What a resumed sweep must share with the sweep it resumes."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}


def final_report(record: RunRecord) -> dict[str, Any]:
    """A trial's last report to Tune: its test-set score (R_f, or R_s of the target), the controls, its speed."""
    e = record.evaluation
    return {METRIC: e.headline, "fooling_rate": e.uap.fooling_rate, "random_fooling_rate": e.random.fooling_rate,
            "success_rate": e.headline if e.target else None, "random_success_rate": e.random_headline if e.target else None,
            "images": record.build.images, "images_per_second": record.build.images_per_second,
            "wall_seconds": record.build.seconds}


class StreamReporter:
    """The engine's ``on_round`` hook in a trial: every ``every`` rounds, the running rate over the stream since the
    last report (the share of natural images already fooled, or at the target, when visited) goes to Tune."""

    def __init__(self, every: int, report: Callable[[dict[str, Any]], None]) -> None:
        self.every, self.report = every, report
        self.last = {"images": 0, "active": 0}

    def __call__(self, r: Any) -> None:  # r: raylab.engine.RoundReport
        if r.round % self.every:
            return
        images, active = r.totals["images"] - self.last["images"], r.totals["active"] - self.last["active"]
        self.last = {"images": r.totals["images"], "active": r.totals["active"]}
        window = 1 - active / images if images else 0.0
        self.report({METRIC: window, "stream_rate": 1 - r.totals["active"] / max(1, r.totals["images"]),
                     "stream_images": r.totals["images"], "images": r.totals["images"], "round": r.round})


def uap_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    """One Tune trial: one UAP with the config's ε, p, ζ, source, target, model, i_max and seed; one results row."""
    from ray import tune

    from .run import run_uap
    from .config import UAPConfig
    from .engine import run_engine
    from .telemetry import Telemetry, ray_sink, run_tags

    s, config = sweep, axes_of(config, sweep.runs())
    trial_id = tune.get_context().get_trial_id()
    out = f"{s.out}/{s.name}/{trial_id}"
    attack = dict(**config["attack"], p=config["p"], zeta=config["zeta"], max_passes=config["max_passes"],
                  target=config["target"], batch_size=s.batch_size, seed=config["seed"], device=s.device, amp=s.amp, examples=4)
    results = ResultsKey(s.results, s.name, trial_id)
    source = config["source"]
    if source in (SOURCE_TRAIN, SOURCE_RANDOM):
        uap = UAPConfig(model=config["model"], medical=Path(s.medical), source=source, out=Path(out), **attack)
        record = run_uap(uap, progress=False, results=results,
                         telemetry=Telemetry(ray_sink(), **run_tags(out=out, source=source, model=config["model"])))
    else:
        engine = EngineConfig(model=config["model"], medical=Path(s.medical), shards=source, out=out, workers=s.workers,
                              cpus_per_worker=s.cpus_per_worker, cpus_per_reader=s.cpus_per_reader, progress_every=60.0,
                              **attack)
        record = run_engine(engine, on_round=StreamReporter(s.report_every, tune.report), results=results,
                            log=lambda line: print(line, flush=True))
    tune.report(final_report(record))


def param_space(s: SweepConfig) -> dict[str, Any]:
    """Tune's search space: the axes only (the fixed settings go in through ``tune.with_parameters``).

    ``run`` is a UAP source with a method, its own step and i_max, named by its label (:meth:`SweepConfig.runs`), so
    the grid holds no sgd trial per ε (sgd has no ε) and Tune's trial table reads ``paper eps=0.008``. An axis
    of one value is a constant, not a column of that table: the table shows what tells the trials apart.
    """
    from ray import tune

    axes = {"model": list(s.models), "run": list(s.runs()), "p": list(s.p), "zeta": list(s.zeta),
            "target": list(s.targets), "seed": list(s.seeds)}
    pick = tune.grid_search if s.search == "grid" else tune.choice
    return {k: pick(v) if len(v) > 1 else v[0] for k, v in axes.items()}


def axes_of(config: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A trial's config as one flat dict of axes: ``source``, ``attack`` and ``max_passes`` out of ``run``, a label of
    ``runs`` (:meth:`SweepConfig.runs`). A trial restored from an older sweep holds the run itself, or (before ``run``
    existed) the axes flat already."""
    run = config.get("run", {})
    return {**{k: v for k, v in config.items() if k != "run"}, **((runs or {})[run] if isinstance(run, str) else run)}


def grouped_asha(s: SweepConfig) -> Any:
    """ASHA (asynchronous successive halving), one bracket per group of :data:`GROUP_AXES`.

    Plain ASHA would compare every trial with every other, and stop the trials of a small ζ only because a larger
    budget fools more images; the paper picks ε and p per ζ (and per source, target and model), so do the rungs.
    Time is the natural images a trial has processed (``stream_images``); trials without a stream (the training
    images, the random control) are never stopped.
    """
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    runs = s.runs()

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
            key = tuple(str(axes_of(trial.config, runs).get(k)) for k in GROUP_AXES)
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


def _outcomes(sweep: str, runs: dict[str, dict[str, Any]]) -> Any:
    """A Tune callback (in the sweep's driver) counting finished, stopped and failed trials as ``raylab_trials``.

    Tune pickles it with the experiment (cloudpickle), so a restored sweep keeps counting.
    """
    from ray import tune

    from .telemetry import Telemetry, ray_sink, run_tags

    class TrialOutcomes(tune.Callback):
        def _done(self, trial: Any, status: str) -> None:
            c = axes_of(trial.config, runs)
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

    from .store import Store, guard_resume

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
                                      failure_config=tune.FailureConfig(max_failures=1), callbacks=[_outcomes(s.name, runs)]),
        )
    return tuner.fit()


def outcome(result: Any) -> str:
    """``finished``, ``stopped`` (early) or ``failed``, of one of Tune's trial results."""
    if result.error is not None:
        return "failed"
    return "finished" if "fooling_rate" in (result.metrics or {}) else "stopped"


"""A sweep's settings (:class:`SweepConfig`): its axes, its fixed settings, where it writes, and its runs by label."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import (
    DEFAULT_MEDICAL, METHODS, SOURCE_RANDOM, SOURCE_TRAIN, AttackConfig, EngineConfig, check, check_device, check_seed,
    check_medical, check_model, default_of, finite, norm, option,
)
from ..results.naming import short_names

SEARCHES = ("grid", "random")
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
            check_model(m)
        check_medical(self.medical)
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
        """A trial's placement group: the trial itself, then (for a shard source) one bundle per worker and reader.

        Under ``--device cuda`` the GPU goes where the UAP is computed: to each engine worker, or to the trial itself
        for the training images and the random control (Ray hides every GPU from a process that reserved none)."""
        gpu = {"GPU": 1.0} if self.device.startswith("cuda") else {}
        if source in (SOURCE_TRAIN, SOURCE_RANDOM):
            return [{"CPU": self.cpus_per_trial, **gpu}]  # the single-machine audit runs inside the trial
        return ([{"CPU": self.cpus_per_trial}] + [{"CPU": self.cpus_per_worker, **gpu}] * self.workers
                + [{"CPU": self.cpus_per_reader}] * self.workers)

    def largest_trial(self) -> tuple[float, float]:
        """The CPUs and GPUs of the largest trial's placement group (over the sources)."""
        return max((sum(b.get("CPU", 0.0) for b in bs), sum(b.get("GPU", 0.0) for b in bs))
                   for bs in (self.bundles(s) for s in self.sources))

    def model_labels(self) -> dict[str, str]:
        """The sweep's models by label, as Tune's trial table shows them: the file name, then the fewest folders that
        tell it from the others (``resnet18.pt``; ``model.pt (site-a)`` and ``model.pt (site-b)``). Tune shows a
        value's last 17 characters after an ellipsis, so what tells two models apart goes last."""
        names = short_names("model", self.models)
        labels = {}
        for m in self.models:
            *folders, name = names[m].split("/")
            labels[f"{name} ({'/'.join(folders)})" if folders else name] = m
        return labels

    def runs(self) -> dict[str, dict[str, Any]]:
        """The sweep's runs by label: each UAP source with each method's own steps (``{"method": "paper", "eps": ε}``
        per ε, ``{"method": "sgd", "lr": lr}`` per lr) and each i_max.

        The random control has no method, step or passes (its ρ is noise drawn from the seed), so it runs once per
        model, p, ζ, target and seed, with the first method's first step in its config (its row has none), not once
        per step. A label names the source (``train``, ``random``; a shard location by its fewest last path parts
        that tell it from the others, as the results table names it, and not at all where it is the sweep's only
        one), the step, which names the method (``eps`` the paper's, ``lr`` the stochastic-gradient one's), and
        i_max when given: ``eps=0.008``, ``lr=1 i_max=5``, ``train eps=0.008``, ``photos-b eps=0.008``,
        ``random``; Tune's table shows their last 20 characters.
        """
        streams = [src for src in self.sources if src not in (SOURCE_TRAIN, SOURCE_RANDOM)]
        names = {SOURCE_TRAIN: SOURCE_TRAIN, SOURCE_RANDOM: SOURCE_RANDOM,
                 **(short_names("source", streams) if len(streams) > 1 else {s: "" for s in streams})}
        attacks = [{"method": m, **({"eps": e} if m == "paper" else {"lr": e})}
                   for m in self.methods for e in (self.eps if m == "paper" else self.lr)]
        out: dict[str, dict[str, Any]] = {}
        for src in self.sources:
            for a in attacks:
                for m in self.max_passes:
                    if src == SOURCE_RANDOM and (a is not attacks[0] or m != self.max_passes[0]):
                        continue
                    parts = [names[src]]
                    if src != SOURCE_RANDOM:  # the step names the method: eps the paper's, lr the stochastic-gradient
                        parts += [f"{k}={v:.12g}" for k, v in a.items() if k != "method"]
                        parts += [f"i_max={m}"] if m is not None else []
                    label = " ".join(p for p in parts if p)
                    out[label] = {"source": src, "attack": a, "max_passes": m}
        return out

    def identity(self) -> dict[str, Any]:
        """What a resumed sweep must share with the sweep it resumes."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}

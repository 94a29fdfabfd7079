"""``raylab audit``: how vulnerable is one model to universal perturbations made without any medical image?

The paper's protocol (Sections 2.2-2.3) on one classifier, at a size the user picks (:data:`BUDGETS`):

1. The model is checked on the clean test set beside always answering its most frequent class
   (:class:`raylab.evaluation.ModelCheck`): a model near that baseline is warned about, since a constant answer is
   fooled by nothing.
2. Each method's step (ε for the paper's, the first step for the stochastic-gradient one) and p are chosen by the
   paper's grid search at the headline ζ, scored by R_f on the medical **validation** split, never the test split
   (:func:`raylab.selection.select_on_validation`, which the reproduction uses too).
3. Non-targeted UAPs over the ζ grid from the natural images and from the model's own training images (the upper
   reference), each evaluated beside the random control of the same radius (the lower reference); targeted UAPs
   toward every class at the headline ζ (R_s); every one with both methods and several seeds of the image order,
   so that every headline number is a mean ± sd. The stronger method is the headline: an audit that reports only
   the weaker attack calls a model safer than it is. For the same reason the verdict also gives the strongest of
   the seeds' UAPs, kept by its R_f on validation (:func:`raylab.selection.kept_on_validation`): seeds can land in different
   directions, and the mean then under-states what an attacker who makes a few UAPs gets. Targeted UAPs keep
   theirs the same way, by R_s toward their class on validation.
4. The predicted-label composition of the natural images (the paper's Tables S1-S3), which explains which targets
   are easy.

Every UAP is one :func:`raylab.run.run_uap` (the models and images loaded once), so one record in
``<out>/uaps/<trial>/`` and one Parquet row (sweep ``audit-<name>``), written as it finishes: a rerun skips what is
done, and a rerun with other settings in the same ``--out`` is refused. With ``ray=True`` the UAPs run as Ray tasks
spread over the cluster (:func:`raylab.engine.sharding.ray_map`). :mod:`raylab.audit_report` words the verdict and
renders the report (HTML with its figures inline, Markdown, PNG, JSON).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .config import (
    DEFAULT_MEDICAL, METHODS, SOURCE_TRAIN, UAPConfig, check, check_device, check_medical, check_model, finite, option,
)
from .core import fooling_rate, label_composition, predict_labels, success_rate
from .evaluation import ModelCheck, by_class
from .record import ResultsKey, budget_used, trial_folder, trial_uap
from .run import SourceImages, run_uap, source_images
from .selection import best, kept_on_validation, select_on_validation, validation_images
from .spread import spread
from .store import Store, guard_resume
from .target import Target, load_target, resolve_target

#: The two image sources of an audit: the natural images under audit and the model's own training images (the upper
#: reference). The random control (the lower reference) is evaluated beside every UAP at the same radius.
SOURCES = ("natural", "train")


@dataclass(frozen=True)
class Budget:
    """How big an audit is: the ζ grid, the seeds, the images, the selection grids and the passes."""

    zetas: tuple[float, ...]
    seeds: int
    natural_limit: int | None
    train_limit: int | None
    eps_grid: tuple[float, ...]
    p_grid: tuple[str, ...]
    lr_grid: tuple[float, ...]
    passes: int
    sgd_epochs: int
    batch_size: int


#: ``quick`` (minutes on a laptop CPU), ``standard`` (an hour or so on a CPU, minutes on a GPU), ``paper`` (the
#: paper's scale: 100,000 natural images, its ε grid and ζ range, five seeds; a GPU cluster).
BUDGETS = {
    "quick": Budget(zetas=(0.02, 0.04, 0.08), seeds=3, natural_limit=300, train_limit=300,
                    eps_grid=(0.004, 0.008, 0.016, 0.032),
                    p_grid=("2",), lr_grid=(1.0,), passes=2, sgd_epochs=3, batch_size=32),
    "standard": Budget(zetas=(0.02, 0.04, 0.06, 0.08, 0.12), seeds=3, natural_limit=1000, train_limit=1000,
                       eps_grid=(0.002, 0.004, 0.008, 0.016), p_grid=("2", "inf"), lr_grid=(0.5, 1.0),
                       passes=2, sgd_epochs=5, batch_size=32),
    "paper": Budget(zetas=(0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.16), seeds=5, natural_limit=100_000, train_limit=None,
                    eps_grid=(0.0005, 0.0013, 0.0026, 0.005), p_grid=("2", "inf"), lr_grid=(1.0,),
                    passes=1, sgd_epochs=1, batch_size=256),
}


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """One audit (``raylab audit``, ``jobs/audit.py``): the model, its data, the natural images and the budget."""

    model: str = option(help="the classifier: a raylab checkpoint, or with --card the file the card describes (state "
                             "dict, TorchScript, torch.export or ONNX)")
    natural: Path = option(help="natural images to make the UAPs from: a folder of photos or a shard location "
                                "(`raylab shard`)")
    out: Path = option(help="output folder (rerun with the same one to resume)")
    card: Path | None = option(None, "the model card of a model trained elsewhere (see `raylab import-model`)")
    medical: Path = option(DEFAULT_MEDICAL, "the medical dataset the model classifies (.npz or CSV folder)", flag="--data")
    budget: str = option("quick", "quick (minutes on a CPU), standard, or paper (the paper's scale, a GPU cluster)",
                         choices=tuple(BUDGETS))
    zeta: float = option(0.04, "the budget of the verdict, as a ratio of the mean Lp norm of the training images")
    zetas: tuple[float, ...] | None = option(None, "the ζ grid (default: the budget's)", parse=float)
    seeds: int | None = option(None, "seeds of the image order per UAP (default: the budget's; at least 2)")
    limit: int | None = option(None, "natural images to use, a seeded sample (default: the budget's)")
    methods: tuple[str, ...] = option(METHODS, "UAP methods: paper, sgd (both by default; the stronger is the headline)",
                                      choices=METHODS)
    targets: tuple[str, ...] = option(("all",), "target classes for targeted UAPs, names or indices ('all': every "
                                                "class; 'none': no targeted UAPs)")
    batch_size: int | None = option(None, "images per update (default: the budget's)")
    name: str | None = option(None, "the audit's name in the results (default: the model file's name)")
    results: str | None = option(None, "Parquet results location, shared by audits to compare (default <out>/results)")
    device: str = option("cpu", "cpu or cuda[:N]")
    amp: bool = option(False, "mixed-precision forward passes")
    ray: bool = option(False, "run the UAPs as Ray tasks spread over the cluster (the output must be reachable from "
                              "every node)")
    cpus_per_uap: float = option(1.0, "with --ray: CPUs per UAP task")

    def __post_init__(self) -> None:
        for name in ("model", "natural", "out", "medical", "card"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else (str(value) if name == "model" else Path(value)))
        check(self.budget in BUDGETS, f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        check_model(self.model)
        check(self.card is None or Path(self.card).is_file(), f"model card not found: {self.card}")
        check_medical(self.medical)
        check(self.natural.is_dir(), f"natural images: {self.natural} is not a folder of photos or a shard location")
        for z in (self.zeta, *(self.zetas or ())):
            finite("zeta", z)
            check(0 < z <= 1, f"zeta must be in (0, 1] (a ratio, e.g. 0.04 for 4%), got {z}")
        check(self.seeds is None or self.seeds >= 2, f"seeds must be >= 2 (one seed is not a result), got {self.seeds}")
        check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(bool(self.methods) and set(self.methods) <= set(METHODS), f"methods must be among {METHODS}, got {self.methods}")
        check(bool(self.targets), "targets: give class names or indices, 'all' or 'none'")
        check(self.name is None or (bool(self.name) and all(c.isalnum() or c in "._-" for c in self.name)),
              f"name may hold letters, digits and . _ - only, got {self.name!r}")
        check_device(self.device)
        check(self.cpus_per_uap > 0, f"cpus_per_uap must be > 0, got {self.cpus_per_uap}")

    @property
    def plan(self) -> Budget:
        """The budget with this audit's overrides; the headline ζ is always on the grid."""
        b = BUDGETS[self.budget]
        zetas = tuple(sorted({*(self.zetas or b.zetas), self.zeta}))
        return dataclasses.replace(b, zetas=zetas, seeds=self.seeds or b.seeds,
                                   natural_limit=self.limit or b.natural_limit, batch_size=self.batch_size or b.batch_size)

    @property
    def sweep(self) -> str:
        """The results sweep every UAP of this audit is a row of."""
        return f"audit-{self.name or Path(self.model).stem}"

    @property
    def results_location(self) -> str:
        return self.results or str(self.out / "results")

    def identity(self) -> dict[str, Any]:
        """What a resumed audit must share with the audit it resumes (the resources may change)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "ray", "cpus_per_uap")}


@dataclass(frozen=True)
class Job:
    """One UAP of the audit: its source, ζ, target class (an index; None: non-targeted), method and seed."""

    source: str
    zeta: float
    target: int | None
    method: str
    seed: int

    @property
    def trial_id(self) -> str:
        """``natural-z0.04-u-sgd-s1``; targeted UAPs name their class by index (``-t1-``), since class names may hold
        any character."""
        return f"{self.source}-z{self.zeta:g}-{'u' if self.target is None else f't{self.target}'}-{self.method}-s{self.seed}"


def plan_jobs(config: AuditConfig, targets: tuple[int, ...]) -> list[Job]:
    """Every UAP of the audit: both sources over the ζ grid, then toward each target at the headline ζ."""
    plan = config.plan
    untargeted = [(s, z, None) for z in plan.zetas for s in SOURCES]
    targeted = [(s, config.zeta, t) for t in targets for s in SOURCES]
    return [Job(s, z, t, m, seed) for s, z, t in untargeted + targeted for m in config.methods for seed in range(plan.seeds)]


def audit_targets(config: AuditConfig, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The class indices of ``config.targets`` ('all': every class; 'none': none); InputError naming a bad one."""
    words = [w.lower() for w in config.targets]
    if words == ["all"]:
        return tuple(range(len(class_names)))
    if words == ["none"]:
        return ()
    found = [resolve_target(t, class_names) for t in config.targets]
    return tuple(dict.fromkeys(t for t in found if t is not None))


# --------------------------------------------------------------------------- the audit's state


@dataclass
class Audit:
    """What the steps share: the config, the model and data, the two sources, the selection, the clean test labels
    and the validation images the selection is scored on (with a sentence saying which they are)."""

    config: AuditConfig
    model: str
    target: Target
    sources: dict[str, SourceImages]
    clean: Tensor
    selected: dict[str, dict[str, Any]]
    val_images: Tensor | None = None
    validation: str = ""
    #: The test labels under each random control predicted so far (:func:`raylab.run.run_uap`'s ``controls``).
    controls: dict[tuple, Tensor] = field(default_factory=dict)

    @property
    def check(self) -> ModelCheck:
        return ModelCheck.of(self.clean, self.target.medical.test_labels, self.target.class_names)

    def uap_config(self, job: Job, *, out: Path) -> UAPConfig:
        """The ``raylab uap`` configuration of one UAP (its step and p from the selection)."""
        return self._config(job.source, job.method, out=out, seed=job.seed, zeta=job.zeta,
                            target=None if job.target is None else str(job.target), **self._step(job))

    def _step(self, job: Job) -> dict[str, Any]:
        sel = self.selected[f"{job.source}/{job.method}"]
        return {"p": sel["p"], "eps": sel["eps"], "lr": sel["lr"]}

    def _config(self, source: str, method: str, *, out: Path, seed: int, zeta: float, p: str, eps: float, lr: float,
                target: str | None = None) -> UAPConfig:
        c, plan = self.config, self.config.plan
        passes = plan.passes if method == "paper" else plan.sgd_epochs
        return UAPConfig(model=self.model, medical=c.medical, source=SOURCE_TRAIN if source == "train" else str(c.natural),
                         out=out, method=method, p=p, zeta=zeta, eps=eps, lr=lr, max_passes=passes, target=target,
                         batch_size=plan.batch_size, seed=seed, device=c.device, amp=c.amp, examples=0)

    def candidates(self, source: str, method: str) -> list[UAPConfig]:
        """The selection grid of one source and method: ε x p for the paper's method, lr x p for SGD."""
        plan = self.config.plan
        steps = [dict(eps=e, lr=1.0) for e in plan.eps_grid] if method == "paper" else [dict(eps=plan.eps_grid[0], lr=lr)
                                                                                         for lr in plan.lr_grid]
        return [self._config(source, method, out=self.config.out, seed=0, zeta=self.config.zeta, p=p, **s)
                for p in plan.p_grid for s in steps]


def prepare(config: AuditConfig, *, log: Callable[[str], None] = print) -> Audit:
    """Load and check everything before any UAP: the model (imported through its card), the data, the targets, the
    natural images; only then is the audit's output started (a refused start leaves nothing to resume)."""
    store = Store.at(config.out)
    model, imported = config.model, None
    if config.card is not None:
        from .cards import import_model
        from .models import classifier_bytes

        imported = classifier_bytes(import_model(config.card, config.model))
        model = str(store.path("model.pt"))
    target = load_target(imported or model, config.medical, target=None, zeta=config.zeta, p=2, device=config.device,
                         model_name=config.model)
    audit_targets(config, target.class_names)  # an unknown target class is refused before any compute
    spec, plan = target.model.spec, config.plan
    assert spec.image_size is not None
    natural = source_images(str(config.natural), target, limit=plan.natural_limit, seed=0)
    store.makedirs()
    guard_resume(store, "audit-config.json", config.identity(), what=f"the audit in {config.out}",
                 hint="use a new --out, or the settings it was started with")
    if imported is not None:
        store.write_bytes("model.pt", imported)
        log(f"imported {config.model} through its card {config.card} as {model}")
    log(natural.source.summary())
    sources = {"natural": natural, "train": source_images(SOURCE_TRAIN, target, limit=plan.train_limit, seed=0)}
    clean = predict_labels(target.model, target.medical.test_images)
    val_images, validation = validation_images(target, 0)
    selected = json.loads(store.read_text("selected.json")) if store.exists("selected.json") else {}
    return Audit(config, model, target, sources, clean, selected, val_images, validation)


def select(audit: Audit, *, log: Callable[[str], None] = print) -> None:
    """The ε (or lr) and p of each source and method, picked on validation and kept in ``selected.json``."""
    store = Store.at(audit.config.out)
    assert audit.val_images is not None
    for source in SOURCES:
        images = audit.sources[source].images  # the UAPs' own images: a step chosen on fewer suits fewer updates
        assert images is not None
        for method in audit.config.methods:
            key = f"{source}/{method}"
            before = key in audit.selected  # a resumed audit keeps its picks, and says what they are
            if not before:
                grid = select_on_validation(audit.target, images, audit.val_images, audit.candidates(source, method),
                                            zeta=audit.config.zeta, seeds=range(audit.config.plan.seeds))
                audit.selected[key] = {**best(grid), "grid": grid}
                store.write_text("selected.json", json.dumps(audit.selected, indent=2))
            pick = audit.selected[key]
            step = f"eps={pick['eps']:g}" if method == "paper" else f"lr={pick['lr']:g}"
            spread = (f" ± {pick['val_fooling_rate_sd']:.3f} over {len(pick['val_per_seed'])} seeds"
                      if "val_per_seed" in pick else "")  # audits before seeds chose by one
            log(f"  {source} ({method}): {step} p={pick['p']} (validation R_f {pick['val_fooling_rate']:.3f}{spread}"
                f"{'; chosen before' if before else ''})")


def run_job(audit: Audit, job: Job) -> None:
    """One UAP of the audit: one ``raylab uap`` run and one results row (the headline runs' seed 0 draws its UAP and
    confusion matrix; the report's examples are drawn for the seed kept, by :func:`draw_kept`)."""
    c = audit.config
    out = trial_folder(c.out, job.trial_id)
    drawn = job.source == "natural" and job.target is None and job.zeta == c.zeta and job.seed == 0
    config = audit.uap_config(job, out=out)
    budget = audit.target.with_budget(zeta=job.zeta, p=config.p, target=config.target)
    run_uap(config, target=budget, source=audit.sources[job.source], clean=audit.clean, controls=audit.controls,
            progress=False, figures=drawn, results=ResultsKey(c.results_location, c.sweep, job.trial_id))


def done_trials(config: AuditConfig) -> set[str]:
    """Trial ids of this audit already in its results (a resumed audit skips them)."""
    from .results import read_results

    if not Path(config.results_location).exists() and "://" not in config.results_location:
        return set()
    return set(read_results(config.results_location, filters={"sweep": config.sweep}).column("trial_id").to_pylist())


def _remote_job(args: tuple[AuditConfig, str, dict[str, Any], Any, Job]) -> str:
    """A Ray task: one UAP, its model and data loaded in the task, its images and the clean test labels from the
    object store."""
    import ray

    config, model, selected, shared_ref, job = args
    target = load_target(model, config.medical, target=None, zeta=config.zeta, p=2, device=config.device)
    sources, clean = ray.get(shared_ref)
    run_job(Audit(config, model, target, sources, clean, selected), job)
    return job.trial_id


def run_jobs(audit: Audit, jobs: list[Job], *, log: Callable[[str], None] = print) -> None:
    """Every job not yet done, here or as Ray tasks; each writes its row as it finishes (a crash loses nothing)."""
    from tqdm import tqdm

    todo = [j for j in jobs if j.trial_id not in done_trials(audit.config)]
    log(f"{len(jobs)} UAPs ({len(jobs) - len(todo)} done before)")
    bar = tqdm(total=len(todo), desc="UAPs", unit="uap", disable=not todo)  # a resumed audit with nothing left: no bar
    try:
        if audit.config.ray:
            import ray

            from .engine.sharding import ray_map

            ref = ray.put((audit.sources, audit.clean))  # computed once here, not again in every task
            args = [(audit.config, audit.model, audit.selected, ref, j) for j in todo]
            for _ in ray_map(_remote_job, args, cpus=audit.config.cpus_per_uap):
                bar.update()
        else:
            for job in todo:
                run_job(audit, job)
                bar.update()
    finally:
        bar.close()


# --------------------------------------------------------------------------- the summary


def summarize(audit: Audit, jobs: list[Job]) -> dict[str, Any]:
    """The audit's numbers from its rows: every (source, method, ζ, target) as mean ± sd over seeds, the controls,
    the model check, the label compositions and the selection (``audit.json``)."""
    from .results import read_results

    c, target = audit.config, audit.target
    names = target.class_names
    rows = {r["trial_id"]: r for r in read_results(c.results_location, filters={"sweep": c.sweep}).to_pylist()}
    for trial, r in rows.items():  # each UAP from the audit folder as it is now, which may have moved since
        r["uap_uri"] = str(trial_uap(c.out, trial))
    groups: dict[tuple[str, str, float, int | None], list[dict[str, Any]]] = {}
    for j in jobs:
        groups.setdefault((j.source, j.method, j.zeta, j.target), []).append(rows[j.trial_id])
    cells = []
    assert audit.val_images is not None
    val_clean = predict_labels(target.model, audit.val_images)
    for (source, method, zeta, t), rs in groups.items():
        name = None if t is None else names[t]
        rate, control = ("fooling_rate", "random_fooling_rate") if t is None else ("success_rate", "random_success_rate")
        cells.append({"source": source, "method": method, "zeta": zeta, "target": name, "p": rs[0]["p"],
                      "rate": spread([r[rate] for r in rs]), "random": spread([r[control] for r in rs]),
                      "per_seed": [r[rate] for r in rs], "seeds": [r["seed"] for r in rs],
                      "trials": [r["trial_id"] for r in rs],
                      "budget_used": spread([budget_used(c.out, r["trial_id"]) for r in rs])})
        if zeta == c.zeta:  # the verdict's budget (every targeted UAP's): the strongest seed beside the mean
            score = ((lambda adv: fooling_rate(val_clean, adv)) if t is None else
                     (lambda adv, t=t: success_rate(adv, t)))
            cells[-1]["kept"] = kept_on_validation(target.model, audit.val_images, rs, score=score, rate=rate)
    check = audit.check
    composition = {s: by_class(label_composition(predict_labels(target.model, audit.sources[s].images),
                                                 num_classes=len(names)), names) for s in SOURCES}
    nat = audit.sources["natural"].source
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
        "plan": asdict(c.plan), "sweep": c.sweep, "results": c.results_location, "model": audit.model,
        "arch": target.model.spec.arch, "image_size": target.model.spec.image_size, "class_names": list(names),
        "check": {**check.to_dict(), "warning": check.baseline_warning()},
        "natural": {"location": nat.location, "kind": nat.kind, "images": nat.used, "skipped": len(nat.skipped),
                    "shards_failed": len(nat.shards_failed), "lost": nat.lost},
        "train_images": audit.sources["train"].source.used, "validation": audit.validation,
        "selected": audit.selected, "composition": composition, "cells": cells,
        "uaps": len(jobs), "uap_seconds": sum(rows[j.trial_id]["wall_seconds"] for j in jobs),
    }
    return summary


def draw_kept(audit: Audit, summary: dict[str, Any]) -> None:
    """``kept-examples.png``: test images under the UAP the verdict quotes (the headline's seed kept on validation),
    those it flips first, for the report."""
    from . import plots
    from .audit_report import headline

    h = headline(summary)
    kept = h.get("kept")
    if kept is None:
        return
    rho = torch.from_numpy(np.load(kept["uap_uri"]))
    test = audit.target.medical.test_images
    adv = predict_labels(audit.target.model, test, rho=rho)
    Store.at(audit.config.out).write_bytes("kept-examples.png", plots.fooled_examples_png(
        test, rho, audit.clean, adv, audit.target.class_names, 8))


def run_audit(config: AuditConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the audit and render its report; returns the summary (``audit.json``)."""
    from .audit_report import render_audit, verdict

    started = time.perf_counter()
    audit = prepare(config, log=log)
    check = audit.check
    log(f"model check: clean accuracy {check.clean_accuracy:.3f}, balanced {check.balanced_accuracy:.3f}, "
        f"always the most frequent class {check.majority_accuracy:.3f}")
    if check.baseline_warning():
        log(check.baseline_warning() or "")
    log(f"choosing each method's step and p on {audit.validation}, ζ = {100 * config.zeta:g} %")
    select(audit, log=log)
    jobs = plan_jobs(config, audit_targets(config, audit.target.class_names))
    run_jobs(audit, jobs, log=log)
    summary = {**summarize(audit, jobs), "seconds": time.perf_counter() - started}
    Store.at(config.out).write_text("audit.json", json.dumps(summary, indent=2, default=str))
    draw_kept(audit, summary)
    path = render_audit(config.out, summary)
    log(verdict(summary))
    log(f"report: {path}")
    return summary

"""The audit's steps in order: each method's step chosen on validation, the UAPs (here or as Ray tasks, each row
written as it finishes), the summary and the report (:func:`run_audit`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..progress import bar as progress_bar
from ..record import ResultsKey, trial_folder
from ..resume import CHECKPOINT
from ..run import run_uap
from ..selection import best, select_on_validation
from ..store import Store
from ..target import load_target
from ..telemetry import Sink, Telemetry, ray_sink, run_tags
from .config import SOURCES, AuditConfig
from .plan import Job, audit_targets, plan_jobs
from .state import Audit, prepare
from .summary import draw_kept, summarize


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


def run_job(audit: Audit, job: Job, sink: Sink | None = None) -> None:
    """One UAP of the audit: one ``raylab uap`` run and one results row (the headline runs' seed 0 draws its UAP and
    confusion matrix; the report's examples are drawn for the seed kept, by :func:`draw_kept`); its metrics go to
    ``sink``, tagged with its trial id as the run."""
    c = audit.config
    out = trial_folder(c.out, job.trial_id)
    drawn = job.source == "natural" and job.target is None and job.zeta == c.zeta and job.seed == 0
    config = audit.uap_config(job, out=out)
    budget = audit.target.with_budget(zeta=job.zeta, p=config.p, target=config.target)
    telemetry = Telemetry(sink, **run_tags(out=job.trial_id, source=config.source, model=c.model))
    run_uap(config, target=budget, source=audit.sources[job.source], clean=audit.clean, controls=audit.controls,
            progress=False, figures=drawn, results=ResultsKey(c.results_location, c.sweep, job.trial_id),
            telemetry=telemetry)


def done_trials(config: AuditConfig) -> set[str]:
    """Trial ids of this audit already in its results (a resumed audit skips them)."""
    from ..results import read_results

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
    run_job(Audit(config, model, target, sources, clean, selected), job, ray_sink())
    return job.trial_id


def run_jobs(audit: Audit, jobs: list[Job], *, log: Callable[[str], None] = print, sink: Sink | None = None) -> None:
    """Every job not yet done, here or as Ray tasks; each writes its row as it finishes (a crash loses nothing), and
    one stopped mid-way resumes from the checkpoint in its folder (:mod:`raylab.resume`; counted in the log). Each
    finished UAP counts as a finished trial of the audit's sweep in ``sink`` (with Ray: Ray's metrics)."""
    todo = [j for j in jobs if j.trial_id not in done_trials(audit.config)]
    resumed = sum(Store.at(trial_folder(audit.config.out, j.trial_id)).exists(CHECKPOINT) for j in todo)
    log(f"{len(jobs)} UAPs ({len(jobs) - len(todo)} done before" + (f", {resumed} resuming from a checkpoint" if resumed else "")
        + ")")
    bar = progress_bar(total=len(todo), desc="UAPs", unit="uap", disable=not todo)  # nothing left to do: no bar
    progress = Telemetry(ray_sink() if audit.config.ray else sink)
    try:
        if audit.config.ray:
            import ray

            from ..engine.sharding import ray_map

            ref = ray.put((audit.sources, audit.clean))  # computed once here, not again in every task
            args = [(audit.config, audit.model, audit.selected, ref, j) for j in todo]
            cpus, gpus = audit.config.uap_task
            for _ in ray_map(_remote_job, args, cpus=cpus, gpus=gpus):
                progress.trial_done(sweep=audit.config.sweep, status="finished")
                bar.update()
        else:
            for job in todo:
                run_job(audit, job, sink)
                progress.trial_done(sweep=audit.config.sweep, status="finished")
                bar.update()
    finally:
        bar.close()


def run_audit(config: AuditConfig, *, log: Callable[[str], None] = print, sink: Sink | None = None) -> dict[str, Any]:
    """Run (or resume) the audit and render its report; returns the summary (``audit.json``). Its UAPs' metrics go
    to ``sink`` (``raylab audit --metrics-port``); those of ``--ray`` tasks go through Ray's agents."""
    from .report import render_audit
    from .verdict import verdict

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
    run_jobs(audit, jobs, log=log, sink=sink)
    summary = {**summarize(audit, jobs), "seconds": time.perf_counter() - started}
    Store.at(config.out).write_text("audit.json", json.dumps(summary, indent=2, default=str))
    draw_kept(audit, summary)
    path = render_audit(config.out, summary)
    log(verdict(summary))
    log(f"report: {path}")
    return summary

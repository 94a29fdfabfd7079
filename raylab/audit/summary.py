"""The audit's numbers from its rows (``audit.json``, :func:`summarize`) and the examples of the UAP the verdict
quotes (:func:`draw_kept`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import fooling_rate, label_composition, predict_labels, success_rate
from ..evaluation import by_class
from ..record import budget_used, trial_uap
from ..selection import kept_on_validation
from ..spread import spread
from ..store import Store
from .config import SOURCES
from .plan import Job
from .state import Audit


def summarize(audit: Audit, jobs: list[Job]) -> dict[str, Any]:
    """The audit's numbers from its rows: every (source, method, ζ, target) as mean ± sd over seeds, the controls,
    the model check, the label compositions and the selection (``audit.json``)."""
    from ..results import read_results

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
                    "shards_failed": len(nat.shards_failed), "lost": nat.lost,
                    "skipped_when_sharded": len(nat.skipped_when_sharded)},
        "train_images": audit.sources["train"].source.used, "validation": audit.validation,
        "selected": audit.selected, "composition": composition, "cells": cells,
        "uaps": len(jobs), "uap_seconds": sum(rows[j.trial_id]["wall_seconds"] for j in jobs),
    }
    return summary


def draw_kept(audit: Audit, summary: dict[str, Any]) -> None:
    """``kept-examples.png``: test images under the UAP the verdict quotes (the headline's seed kept on validation),
    those it flips first, for the report."""
    from .. import plots
    from .verdict import headline

    h = headline(summary)
    kept = h.get("kept")
    if kept is None:
        return
    rho = torch.from_numpy(np.load(kept["uap_uri"]))
    test = audit.target.medical.test_images
    adv = predict_labels(audit.target.model, test, rho=rho)
    Store.at(audit.config.out).write_bytes("kept-examples.png", plots.fooled_examples_png(
        test, rho, audit.clean, adv, audit.target.class_names, 8))

"""One record of a finished UAP run, and the one writer of its files and its results row.

Every way of making a UAP — ``raylab uap`` (:mod:`raylab.run`), the Ray
engine (:mod:`raylab.engine`), a sweep trial (:mod:`raylab.sweep`) and the
paper's reproduction (:mod:`raylab.reproduce`) — ends in a :class:`RunRecord`
built from the same pieces (the run's configuration, its source, how the UAP
was built, ρ's norms and the :class:`~raylab.evaluation.Evaluation`) and in
:func:`write_run`, which writes ``uap.npy``, ``metrics.json`` and the figures
through :class:`~raylab.store.Store` and, when asked, the run's Parquet row
(:mod:`raylab.results`). ``metrics.json`` (:meth:`RunRecord.metrics`) and the
row (:meth:`RunRecord.row`) are two views of the same record; the README's
"One record, two views" section documents both.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import AttackConfig
from .core import lp_norm
from .evaluation import Evaluation
from .results import SCHEMA_VERSION, SOURCE_KINDS, write_rows
from .store import Store


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where the UAP's input images came from, and how much of it reached the attack."""

    kind: str
    location: str
    #: Images the source holds: decoded from a folder, or listed by a shard manifest.
    images: int
    #: Distinct images that reached the attack (one pass).
    used: int
    #: ``"name: why"`` of each image that could not be decoded (each image once, however many passes).
    skipped: tuple[str, ...] = ()
    #: ``"shard: why"`` of each shard that was missing, truncated or disagreed with its manifest.
    shards_failed: tuple[str, ...] = ()
    #: ``"name: why"`` of each file the shards were written without (unreadable when ``raylab shard`` read it: the
    #: manifest's ``skipped``), outside ``images``.
    skipped_when_sharded: tuple[str, ...] = ()
    #: The share of each label the model predicts for the source images (Tables S1-S3), when known.
    label_composition: dict[str, float] | None = None
    #: What the stored images lack for the model (shards stored gray or smaller than its input), or None.
    warning: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")

    @property
    def lost(self) -> int:
        """Images the source listed that never reached the attack and were not counted as skipped (failed shards)."""
        return max(0, self.images - self.used - len(self.skipped)) if self.kind == "shards" else 0

    def summary(self) -> str:
        """``source: <location> (1000 images, 950 used, 0 skipped; 50 lost in 1 failed shard: ...)``."""
        parts = [f"{self.images} images"]
        if self.used != self.images:
            parts.append(f"{self.used} used")
        parts.append(f"{len(self.skipped)} skipped")
        text = ", ".join(parts)
        if self.shards_failed:
            text += (f"; {self.lost} lost in {len(self.shards_failed)} failed shard(s): "
                     + "; ".join(self.shards_failed[:3]) + (" ..." if len(self.shards_failed) > 3 else ""))
        if self.skipped_when_sharded:
            text += (f"; {len(self.skipped_when_sharded)} unreadable file(s) left out when sharded "
                     f"(first: {self.skipped_when_sharded[0]})")
        return f"source: {self.location} ({text})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "location": self.location, "images": self.images,
                             "images_used": self.used, "images_lost": self.lost, "skipped": len(self.skipped),
                             "skipped_files": list(self.skipped[:100]), "shards_failed": list(self.shards_failed)}
        if self.kind == "shards":
            d["skipped_when_sharded"] = len(self.skipped_when_sharded)
            d["skipped_when_sharded_files"] = list(self.skipped_when_sharded[:100])
        if self.label_composition is not None:
            d["label_composition"] = dict(self.label_composition)
        if self.warning:
            d["warning"] = self.warning
        return d


@dataclass(frozen=True, kw_only=True)
class Build:
    """How the UAP was built: image visits over every pass, active and accepted ones, and the time it took."""

    images: int = 0
    active: int = 0
    accepted: int = 0
    passes: int = 0
    #: Seconds spent building the UAP (loading and evaluation excluded), in every writer.
    seconds: float = 0.0
    workers: int = 1
    #: Images per update: B (per worker in the engine), 1 in faithful mode.
    batch_size: int = 1
    #: The engine's own counts: rounds, per-pass counts, the eval history, the δ stop, worker idle fraction.
    engine: dict[str, Any] | None = None

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 and self.images else None


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """A finished UAP run: what was attacked, with what, how, and what it did to the test set."""

    attack: AttackConfig
    #: The run's whole validated configuration (``UAPConfig.to_dict()`` or ``EngineConfig.to_dict()``).
    config: dict[str, Any]
    model: str
    arch: str
    image_size: int
    medical: str
    radius: float
    source: Source
    build: Build
    evaluation: Evaluation
    rho_l2: float
    rho_linf: float
    #: Where ``uap.npy`` was written (set by :func:`write_run`).
    uap_uri: str = ""
    #: What determined ρ (:func:`raylab.resume.fingerprint`'s parts) for ``raylab uap``'s code (every audit's,
    #: reproduction's and single-machine trial's UAP, the random control's too): a later run into the same folder
    #: replaces it only if it is the same run. None for the engine's, whose kept checkpoint does the same.
    fingerprint: dict[str, Any] | None = None

    @staticmethod
    def norms(rho: Tensor) -> dict[str, float]:
        return {"rho_l2": float(lp_norm(rho[None], 2)), "rho_linf": float(lp_norm(rho[None], "inf"))}

    @property
    def headline(self) -> float:
        return self.evaluation.headline

    # -- view 1: metrics.json ------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """The ``metrics.json`` view (the fields every earlier raylab wrote, plus ``model`` and the source's counts)."""
        b = self.build
        out = {
            **self.evaluation.to_dict(),
            "radius": self.radius,
            "uap_norms": {"l2": self.rho_l2, "linf": self.rho_linf},
            "model": {"location": self.model, "arch": self.arch, "image_size": self.image_size},
            "source": self.source.to_dict(),
            "stats": {"images": b.images, "active": b.active, "accepted": b.accepted, "passes": b.passes},
            "seconds": b.seconds,
            "images_per_second": b.images_per_second,
            "config": dict(self.config),
        }
        if b.engine is not None:
            out.update(b.engine)
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        return out

    # -- view 2: the Parquet row ---------------------------------------------------------------------------------
    def row(self, *, sweep: str, trial_id: str, run_id: str | None = None) -> dict[str, Any]:
        """The results row (:data:`raylab.results.SCHEMA`, validated when written)."""
        a, e, target = self.attack, self.evaluation, self.evaluation.target
        stepped = self.source.kind != "random"  # the random control takes no step: its config's is a placeholder
        return {
            "schema_version": SCHEMA_VERSION, "sweep": sweep, "trial_id": trial_id,
            "run_id": run_id or uuid.uuid4().hex[:12], "created_at": datetime.now(timezone.utc),
            "model": self.model, "arch": self.arch, "image_size": self.image_size, "medical": self.medical,
            "source_kind": self.source.kind, "source": self.source.location,
            "method": a.method, "p": str(a.p), "zeta": a.zeta,
            "eps": a.eps if a.method == "paper" and stepped else None, "lr": a.lr if a.method == "sgd" and stepped else None,
            "max_passes": a.max_passes, "delta": a.delta, "target": target,
            "batch_size": self.build.batch_size, "workers": self.build.workers, "step_norm": a.step_norm, "clip": a.clip,
            "seed": a.seed, "device": a.device, "amp": a.amp,
            "fooling_rate": e.uap.fooling_rate,
            "success_rate": None if target is None else e.uap.success_rate[target],
            "random_fooling_rate": e.random.fooling_rate,
            "random_success_rate": None if target is None else e.random.success_rate[target],
            "clean_accuracy": e.clean_accuracy, "balanced_accuracy": e.balanced_accuracy,
            "majority_accuracy": e.majority_accuracy, "test_images": e.test_images,
            "accepted": self.build.accepted, "images_processed": self.build.images,
            "images_skipped": len(self.source.skipped),
            "confusion_matrix": e.uap.confusion_matrix, "class_names": list(e.class_names),
            "wall_seconds": self.build.seconds, "images_per_second": self.build.images_per_second,
            "uap_uri": self.uap_uri, "uap_l2": self.rho_l2, "uap_linf": self.rho_linf,
            **versions(),
        }

    # -- view 3: what a person reads -----------------------------------------------------------------------------
    def _step_notes(self) -> list[str]:
        """The paper's method with an ε that never flipped an image (ρ = 0), or that left ρ inside its budget: its
        step and passes bound it, not ζ (Section 2.2: ε and p are chosen by grid search, which this one run is not)."""
        a, b = self.attack, self.build
        if a.method != "paper" or not b.images:
            return []
        steps = f"eps = {a.eps:g} in {b.passes} pass(es) over {self.source.used} image(s)"
        if b.accepted == 0:
            did = "flipped no image" if self.evaluation.target is None else "sent no image to the target"
            return [f"warning: no FGSM step was accepted, so rho = 0: {steps} {did}; raise --eps or --i-max "
                    "(the paper chose eps by grid search on validation images, as `raylab audit` does)"]
        used = share_of_radius({"l2": self.rho_l2, "linf": self.rho_linf}, a.p, self.radius)
        if used < BUDGET_REACHED:
            return [f"note: rho ends at {100 * used:.0f} % of its zeta radius: {steps} bound it, not zeta (a larger "
                    "--eps or --i-max may fool more)"]
        return []

    def summary(self) -> str:
        """The lines printed after a run: the source (with failed shards and lost images) and the headline rates."""
        e, b = self.evaluation, self.build
        rate = f", {b.images_per_second:.0f} img/s" if b.images_per_second else ""
        lines = [self.source.summary() + rate] + ([self.source.warning] if self.source.warning else [])
        warning = e.baseline_warning()
        if warning:
            lines.append(warning)
        lines += self._step_notes()
        lines.append(e.rates_line(rho_l2=self.rho_l2))
        return "\n".join(lines)


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def versions() -> dict[str, str]:
    """The ``*_version`` columns: raylab, torch and ray as installed."""
    from . import __version__

    return {"raylab_version": __version__, "torch_version": _installed("torch"), "ray_version": _installed("ray")}


@dataclass(frozen=True)
class ResultsKey:
    """Where a run's Parquet row goes: a results location, its sweep and the row's trial id."""

    location: str
    sweep: str
    trial_id: str
    run_id: str | None = None


def npy_bytes(rho: Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, rho.detach().cpu().numpy().astype(np.float32))
    return buf.getvalue()


@dataclass(frozen=True)
class Figures:
    """Which figures :func:`write_run` draws: the UAP, the confusion matrix and ``examples`` clean/adversarial pairs."""

    uap: bool = True
    confusion: bool = True
    examples: int = 8
    title: str = ""
    test_images: Tensor | None = field(default=None, repr=False)


def trial_folder(out: str | Path, trial: str) -> Path:
    """Where an audit or a reproduction writes trial ``trial``'s run: ``<out>/uaps/<trial>/``."""
    return Path(out) / "uaps" / trial


def trial_uap(out: str | Path, trial: str) -> Path:
    """Trial ``trial``'s ``uap.npy`` in the study folder ``out`` *as it is now*. A row's ``uap_uri`` is where the UAP
    was written; a study folder is self-contained, so one moved or copied since (say, from a cluster's disk to a
    laptop) resumes and renders its report from its new place by reading its UAPs here instead."""
    return trial_folder(out, trial) / "uap.npy"


#: A UAP whose :func:`budget_used` (mean over seeds) is below this ended inside its budget; both reports say so.
BUDGET_REACHED = 0.99


def trial_metrics(out: str | Path, trial: str) -> dict[str, Any]:
    """Trial ``trial``'s ``metrics.json`` in the study or audit folder ``out`` as it is now."""
    return json.loads(Store.at(trial_folder(out, trial)).read_text("metrics.json"))


def budget_used(out: str | Path, trial: str, metrics: dict[str, Any] | None = None) -> float:
    """ρ's norm, in the run's own p, as a share of its radius ζ (from the trial's ``metrics.json``, or ``metrics``
    already read). Below 1, the UAP ended inside its budget: its step and the images it saw bound it, not ζ (the
    paper's method accepts a bounded number of ε-steps in its passes, Section 2.2), so a larger ζ would give the same
    UAP."""
    m = metrics if metrics is not None else trial_metrics(out, trial)
    return share_of_radius(m["uap_norms"], m["config"]["p"], m["radius"])


def share_of_radius(norms: dict[str, float], p: object, radius: float) -> float:
    """ρ's norm in its own p (``norms``: ``{"l2", "linf"}``, as ``metrics.json``'s ``uap_norms``) over its radius."""
    return norms["l2" if str(p) == "2" else "linf"] / radius


def write_run(record: RunRecord, rho: Tensor, store: Store, *, figures: Figures | None = Figures(),
              results: ResultsKey | None = None) -> RunRecord:
    """Write ``uap.npy``, ``metrics.json`` and the figures of a run into ``store``, and its row into ``results``.

    Every file goes through :class:`~raylab.store.Store` (atomic, one-line :class:`~raylab.errors.OutputError`).
    Returns the record with ``uap_uri`` set.
    """
    from . import plots

    store.makedirs()
    record = dataclasses.replace(record, uap_uri=store.write_bytes("uap.npy", npy_bytes(rho)))
    store.write_text("metrics.json", json.dumps(record.metrics(), indent=2))
    if figures is not None:
        e = record.evaluation
        title = figures.title or f"L{record.attack.p} zeta={record.attack.zeta:g}, {e.headline_text()}"
        if figures.uap:
            store.write_bytes("uap.png", plots.uap_png(rho, title=title))
        if figures.confusion:
            store.write_bytes("confusion.png", plots.confusion_png(torch.tensor(e.uap.confusion_matrix), e.class_names,
                                                                   title=title))
        if figures.examples and figures.test_images is not None:
            store.write_bytes("examples.png", plots.fooled_examples_png(figures.test_images, rho, e.clean, e.adversarial,
                                                                        e.class_names, figures.examples))
    if results is not None:
        write_rows(results.location, [record.row(sweep=results.sweep, trial_id=results.trial_id, run_id=results.run_id)])
    return record

"""What the audit's steps share (:class:`Audit`), loaded and checked before any UAP (:func:`prepare`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ..config import SOURCE_TRAIN, UAPConfig
from ..core import predict_labels
from ..evaluation import ModelCheck
from ..run import SourceImages, source_images
from ..selection import validation_images
from ..store import Store, guard_resume
from ..target import Target, load_target
from .config import AuditConfig
from .plan import Job, audit_targets


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
        from ..cards import import_model
        from ..models import classifier_bytes

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
    log(f"medical data: {config.medical}, as the model takes it: {target.medical.summary()}")
    log(natural.source.summary())
    if natural.source.warning:
        log(natural.source.warning)
    sources = {"natural": natural, "train": source_images(SOURCE_TRAIN, target, limit=plan.train_limit, seed=0)}
    clean = predict_labels(target.model, target.medical.test_images)
    val_images, validation = validation_images(target, 0)
    selected = json.loads(store.read_text("selected.json")) if store.exists("selected.json") else {}
    return Audit(config, model, target, sources, clean, selected, val_images, validation)

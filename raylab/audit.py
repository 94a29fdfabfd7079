"""``raylab uap``: one UAP on one machine, from files to files.

Loads a classifier and a medical dataset, builds the UAP from the chosen
source (natural images, the medical training set, or the random control),
evaluates it on the medical test set beside a random vector of the same Lp
norm (Section 2.2-2.3), and writes ``uap.npy``, ``metrics.json`` and PNGs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .config import SOURCE_RANDOM, SOURCE_TRAIN, UAPConfig, resolve_target
from .core import (
    UAP, VALID_RANGE, Criterion, Norm, StepStats, Targeted, Untargeted, label_composition, lp_norm, predict_labels,
    random_sphere, zeta_radius,
)
from .data.medical import MedicalSet, load_medical
from .data.natural import SkipReport, load_image_folder
from .errors import InputError
from .evaluation import by_class, headline, report
from .models import Classifier, for_inference, load_classifier
from .plots import save_confusion_png, save_examples_png, save_uap_png
from .telemetry import Telemetry


@dataclass(frozen=True)
class Target:
    """The classifier under audit, its medical dataset (resized to the model's input) and the UAP's budget."""

    model: Classifier
    medical: MedicalSet
    class_names: tuple[str, ...]
    target: int | None
    radius: float


@dataclass(frozen=True)
class Prepared(Target):
    """Everything a run needs, loaded and checked before compute starts: the target and the UAP's source images."""

    source_images: Tensor | None
    skipped: SkipReport


def load_target(model: str | Path | bytes, medical_path: str | Path, *, target: str | None, zeta: float, p: Norm,
                device: str = "cpu", model_name: str | None = None) -> Target:
    """Load the model and the medical set and check that they fit; InputError naming the first bad one."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA GPU is visible")
    name = model_name or str(model)
    classifier = load_classifier(model, map_location=device, name=name)
    spec = classifier.spec
    medical = load_medical(medical_path)
    if medical.channels != spec.in_channels:
        raise InputError(f"{medical_path}: images have {medical.channels} channel(s) but model {name} expects {spec.in_channels}")
    if medical.num_classes != spec.num_classes:
        raise InputError(f"{medical_path}: {medical.num_classes} classes but model {name} has {spec.num_classes} outputs")
    medical = medical.resized(spec.image_size)
    class_names = spec.class_names or medical.class_names
    return Target(classifier, medical, class_names, resolve_target(target, class_names),
                  zeta_radius(medical.train_images, zeta=zeta, p=p))


def prepare(config: UAPConfig) -> Prepared:
    """Load and check every input; raises InputError naming the first bad one."""
    t = load_target(config.model, config.medical, target=config.target, zeta=config.zeta, p=config.p, device=config.device)
    model, medical, class_names, target, radius, spec = t.model, t.medical, t.class_names, t.target, t.radius, t.model.spec
    skipped = SkipReport(skipped=[])
    source: Tensor | None
    if config.source == SOURCE_RANDOM:
        source = None
    elif config.source == SOURCE_TRAIN:
        source = medical.train_images
        if config.limit is not None and config.limit < len(source):
            g = torch.Generator().manual_seed(config.seed)
            source = source[torch.randperm(len(source), generator=g)[: config.limit].sort().values]
    else:
        source, _, skipped = load_image_folder(
            config.source, channels=spec.in_channels, size=spec.image_size, limit=config.limit, seed=config.seed
        )
    return Prepared(model, medical, class_names, target, radius, source, skipped)


def run_tags(config: UAPConfig) -> dict[str, str]:
    """The tags of this run's metrics (:mod:`raylab.telemetry`): output folder, source and model names."""
    return {"run": Path(config.out).name, "source": Path(config.source).name, "model": Path(config.model).name}


def run_uap(config: UAPConfig, *, progress: bool = True, telemetry: Telemetry | None = None) -> dict[str, Any]:
    """Run one UAP end to end and write its outputs into ``config.out``; returns the metrics.

    ``telemetry`` (tagged with :func:`run_tags`) receives the images, accepted steps, ||ρ|| and stream rate as
    the UAP is built.
    """
    prep = prepare(config)
    telemetry = telemetry if telemetry is not None else Telemetry()
    telemetry.skipped(images=prep.skipped.count)
    model = for_inference(prep.model, device=config.device, amp=config.amp)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    criterion: Criterion = Untargeted() if prep.target is None else Targeted(prep.target)
    shape = tuple(prep.medical.test_images.shape[1:])
    started = time.perf_counter()
    stats = StepStats()
    if prep.source_images is None:
        rho = random_sphere(shape, radius=prep.radius, p=config.p, generator=torch.Generator().manual_seed(config.seed))
    else:
        rho, stats = _generate(config, model, prep.source_images, criterion, prep.radius, progress, telemetry)
    seconds = time.perf_counter() - started
    metrics = evaluate(config, prep, rho, criterion)
    metrics.update(
        radius=prep.radius,
        uap_norms={"l2": float(lp_norm(rho[None], 2)), "linf": float(lp_norm(rho[None], "inf"))},
        source={
            "kind": config.source if config.source in (SOURCE_TRAIN, SOURCE_RANDOM) else "folder",
            "location": config.source,
            "images": 0 if prep.source_images is None else len(prep.source_images),
            "skipped": prep.skipped.count,
            "skipped_files": [f"{name}: {why}" for name, why in prep.skipped.skipped],
        },
        stats={"images": stats.images, "active": stats.active, "accepted": stats.accepted},
        seconds=seconds,
        images_per_second=stats.images / seconds if seconds > 0 and stats.images else None,
        config=config.to_dict(),
    )
    if prep.source_images is not None:
        src_labels = predict_labels(model, prep.source_images, amp=config.amp)
        metrics["source"]["label_composition"] = by_class(label_composition(src_labels, num_classes=len(prep.class_names)), prep.class_names)
    _write(out, rho, metrics, prep, config)
    return metrics


def _generate(
    config: UAPConfig, model: Classifier, images: Tensor, criterion: Criterion, radius: float, progress: bool,
    telemetry: Telemetry,
) -> tuple[Tensor, StepStats]:
    """The UAP over the source in chunks, ρ carried from chunk to chunk (the paper streamed 100 × 1,000)."""
    attack = UAP(
        radius=radius, p=config.p, eps=config.eps, max_passes=config.max_passes, delta=config.delta,
        mode=config.mode, batch_size=config.batch_size, step_norm=config.step_norm,
        clip=VALID_RANGE if config.clip else None, amp=config.amp,
    )
    rho: Tensor | None = None
    total = StepStats()
    chunks = images.split(config.chunk_size)
    bar = tqdm(total=len(images) * config.max_passes, unit="img", disable=not progress, desc="UAP", smoothing=0.1)

    last = time.perf_counter()

    def on_batch(s: StepStats, current: Tensor) -> None:
        nonlocal total, last
        now, total = time.perf_counter(), total + s
        norm = float(lp_norm(current[None], config.p))
        bar.update(s.images)
        bar.set_postfix(accepted=total.accepted, norm=f"{norm:.3g}", refresh=False)
        telemetry.step_time(worker=0, seconds=now - last)
        telemetry.batch_done(worker=0, images=s.images, accepted=s.accepted)
        telemetry.round_done(rho_norm=norm, p=str(config.p), stream_rate=1 - total.active / max(1, total.images),
                             criterion="fooling" if isinstance(criterion, Untargeted) else "success", idle_ratio=None)
        last = now

    try:
        for k, chunk in enumerate(chunks):
            rho = attack(model, chunk, criterion=criterion, rho=rho, seed=config.seed + k, on_batch=on_batch).rho
    finally:
        bar.close()
    assert rho is not None
    return rho, total


def evaluate(config: UAPConfig, prep: Prepared, rho: Tensor, criterion: Criterion) -> dict[str, Any]:
    """R_f, R_s per class and the confusion matrix on the medical test set, for ρ and for the random control."""
    model, test = prep.model, prep.medical.test_images
    clip = VALID_RANGE if config.clip else None
    clean = predict_labels(model, test, amp=config.amp)
    random_rho = random_sphere(tuple(rho.shape), radius=prep.radius, p=config.p,
                               generator=torch.Generator().manual_seed(config.seed + 1))
    adv = predict_labels(model, test, rho=rho, clip=clip, amp=config.amp)
    adv_random = predict_labels(model, test, rho=random_rho, clip=clip, amp=config.amp)
    metrics = report(clean, adv, adv_random, prep.medical.test_labels, prep.class_names, prep.target)
    return {**metrics, "_clean": clean, "_adv": adv}


def _write(out: Path, rho: Tensor, metrics: dict[str, Any], prep: Prepared, config: UAPConfig) -> None:
    clean, adv = metrics.pop("_clean"), metrics.pop("_adv")
    np.save(out / "uap.npy", rho.numpy().astype(np.float32))
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")
    what = "random control" if config.source == SOURCE_RANDOM else f"UAP from {Path(config.source).name}"
    rate = headline(metrics)
    title = f"{what}, L{config.p} zeta={config.zeta:g}, {rate}"
    save_uap_png(rho, out / "uap.png", title=title)
    save_confusion_png(torch.tensor(metrics["confusion_matrix"]), prep.class_names, out / "confusion.png", title=title)
    if config.examples:
        idx = _example_indices(clean, adv, config.examples)
        save_examples_png(prep.medical.test_images[idx], rho, clean[idx], adv[idx], prep.class_names, out / "examples.png")


def _example_indices(clean: Tensor, adv: Tensor, n: int) -> Tensor:
    """Fooled images first (they show the attack), then others, in test-set order."""
    fooled = (clean != adv).nonzero().flatten()
    kept = (clean == adv).nonzero().flatten()
    return torch.cat([fooled, kept])[:n]

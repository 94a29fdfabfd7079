"""``raylab uap``: one UAP on one machine, from files to a :class:`~raylab.record.RunRecord`.

Loads (or is handed) the classifier and its medical data
(:mod:`raylab.target`) and the UAP's source images — a natural-image folder,
the medical training set, or none for the random control — builds the UAP
with the core (:class:`raylab.core.UAP`, ρ carried from chunk to chunk),
evaluates it beside the random control (:func:`raylab.evaluation.evaluate`)
and writes the record (:func:`raylab.record.write_run`). The reproduction of
the paper runs every one of its UAPs through :func:`run_uap` too, handing in
the models and images it has loaded once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .config import SOURCE_RANDOM, SOURCE_TRAIN, UAPConfig
from .core import (SGDUAP, UAP, VALID_RANGE, Criterion, PassState, StepStats, label_composition, lp_norm,
                   predict_labels, weak_regime)
from .data.natural import load_image_folder
from .data.shards import MANIFEST_NAME, load_shard_images
from .errors import InputError
from .evaluation import by_class, evaluate, random_uap
from .fingerprint import CheckpointFile, Fingerprint
from .models import for_inference
from .progress import bar as progress_bar
from .record import Build, Figures, ResultsKey, RunRecord, Source, write_run
from .resume import RANDOM_CONTROL, Checkpoint, fingerprint, uap_checkpoint
from .store import Store
from .target import Target, load_target
from .telemetry import Telemetry


@dataclass(frozen=True)
class SourceImages:
    """The UAP's input images (None for the random control) and what the record says of them."""

    images: Tensor | None
    source: Source


def balanced_by_prediction(images: Tensor, predicted: Tensor, *, num_classes: int, seed: int) -> Tensor:
    """Images resampled (with replacement) so every label the model predicts for them is equally frequent.

    The paper's Discussion attributes the ~50 % ceiling of R_f on chest X-rays to the imbalanced predicted labels
    of natural images (Table S3) and suggests controlling that composition; this is the control.
    """
    present = [c for c in range(num_classes) if (predicted == c).any()]
    if len(present) < 2:
        return images
    g = torch.Generator().manual_seed(seed)
    per_class = len(images) // len(present)
    picks = [(predicted == c).nonzero().flatten() for c in present]
    order = torch.cat([idx[torch.randint(len(idx), (per_class,), generator=g)] for idx in picks])
    return images[order[torch.randperm(len(order), generator=g)]]


def load_source(config: UAPConfig, target: Target) -> SourceImages:
    """The source images of ``config`` at the model's input size (label-balanced when asked); InputError naming a
    bad folder."""
    found = source_images(config.source, target, limit=config.limit, seed=config.seed)
    return found if found.images is None else with_balance(config, target, found.images, found.source)


def source_images(location: str, target: Target, *, limit: int | None, seed: int) -> SourceImages:
    """``random`` (no images), ``train`` (the medical training images), a shard location (``raylab shard``) or a
    folder of photos, at the model's channels and size; ``limit``: a seeded sample. Undecodable images are skipped
    and counted (a shard location's failed shards too)."""
    spec = target.model.spec
    assert spec.image_size is not None
    if location == SOURCE_RANDOM:
        return SourceImages(None, Source(kind="random", location=SOURCE_RANDOM, images=0, used=0))
    if location == SOURCE_TRAIN:
        images = target.medical.train_images
        if limit is not None and limit < len(images):
            g = torch.Generator().manual_seed(seed)
            images = images[torch.randperm(len(images), generator=g)[:limit].sort().values]
        return SourceImages(images, Source(kind="train", location=SOURCE_TRAIN, images=len(images), used=len(images)))
    if (Path(location) / MANIFEST_NAME).is_file():
        loaded = load_shard_images(location, channels=spec.in_channels, size=spec.image_size, limit=limit, seed=seed)
        return SourceImages(loaded.images, Source(kind="shards", location=location, images=loaded.listed,
                                                  used=len(loaded.images), skipped=loaded.skipped,
                                                  shards_failed=loaded.failed, warning=loaded.warning,
                                                  skipped_when_sharded=loaded.skipped_when_sharded))
    images, _, report = load_image_folder(location, channels=spec.in_channels, size=spec.image_size, limit=limit,
                                          seed=seed)
    return SourceImages(images, Source(kind="folder", location=location, images=len(images), used=len(images),
                                       skipped=tuple(f"{name}: {why}" for name, why in report.skipped)))


def with_balance(config: UAPConfig, target: Target, images: Tensor, source: Source) -> SourceImages:
    """``images`` label-balanced when ``config.balance`` asks for it (the record's location says so)."""
    if not config.balance:
        return SourceImages(images, source)
    predicted = predict_labels(target.model, images, amp=config.amp)
    balanced = balanced_by_prediction(images, predicted, num_classes=len(target.class_names), seed=config.seed)
    return SourceImages(balanced, Source(kind=source.kind, location=f"{source.location} (balanced by predicted label)",
                                         images=source.images, used=len(balanced), skipped=source.skipped,
                                         warning=source.warning, skipped_when_sharded=source.skipped_when_sharded))


def attack_for(config: UAPConfig, radius: float) -> UAP | SGDUAP:
    """The core attack of ``config.method``: the paper's :class:`UAP` or the stochastic-gradient :class:`SGDUAP`."""
    clip = VALID_RANGE if config.clip else None
    assert config.max_passes is not None
    if config.method == "sgd":
        return SGDUAP(radius=radius, p=config.p, lr=config.lr, max_passes=config.max_passes, batch_size=config.batch_size,
                      loss_clamp=config.loss_clamp, schedule=config.schedule, clip=clip, amp=config.amp)
    return UAP(radius=radius, p=config.p, eps=config.eps, max_passes=config.max_passes, delta=config.delta,
               mode=config.mode, batch_size=config.batch_size, step_norm=config.step_norm, clip=clip, amp=config.amp,
               static_shapes=config.static, cuda_graphs=config.cuda_graphs)


def generate(config: UAPConfig, model: torch.nn.Module, images: Tensor, criterion: Criterion, radius: float, *,
             progress: bool = False, telemetry: Telemetry | None = None, resume: Checkpoint | None = None,
             checkpoint_file: CheckpointFile[Checkpoint] | None = None) -> tuple[Tensor, StepStats, int]:
    """The UAP over ``images``, ρ carried from chunk to chunk (the authors' code streamed 100 x 1,000).

    The paper's method runs chunk by chunk (each chunk its i_max passes); the stochastic-gradient method makes its
    epochs over all the images, one schedule for the whole run. ``resume`` continues from a checkpoint;
    ``checkpoint_file`` saves one after every pass (:mod:`raylab.resume`). Returns ρ, the counts over every pass and
    chunk, and the most passes any chunk made.
    """
    attack = attack_for(config, radius)
    chunk_size = len(images) if isinstance(attack, SGDUAP) else config.chunk_size
    telemetry = telemetry or Telemetry()
    resume = resume or Checkpoint(0, PassState(0, torch.zeros(0)))
    rho: Tensor | None = None  # a checkpoint's state (after one pass or more) holds its chunk's ρ
    total, passes, seen = resume.done, resume.passes, resume.done + resume.state.stats
    assert config.max_passes is not None
    bar = progress_bar(total=len(images) * config.max_passes, initial=seen.images, unit="img", disable=not progress,
                       desc=f"UAP ({config.method})", smoothing=0.1)
    started = last = time.perf_counter()
    kind = "fooling" if criterion.sign > 0 else "success"

    def on_batch(s: StepStats, current: Tensor) -> None:
        nonlocal seen, last
        now, seen = time.perf_counter(), seen + s
        norm = float(lp_norm(current[None], config.p))
        bar.update(s.images)
        bar.set_postfix(accepted=seen.accepted, norm=f"{norm:.3g}", refresh=False)
        telemetry.step_time(worker=0, seconds=now - last)
        telemetry.batch_done(worker=0, images=s.images, accepted=s.accepted)
        telemetry.round_done(rho_norm=norm, p=str(config.p), stream_rate=1 - seen.active / max(1, seen.images),
                             criterion=kind, idle_ratio=None)
        last = now

    try:
        for k, chunk in enumerate(images.split(chunk_size)):
            if k < resume.chunk:
                continue
            state = resume.state if k == resume.chunk and resume.state.passes else None
            if state is not None and state.finished:  # the checkpoint was written after this chunk's last pass
                rho, chunk_passes, chunk_stats = state.rho, state.passes, state.stats
            else:
                def on_pass(s: PassState, k: int = k, done: StepStats = total, most: int = passes) -> None:
                    assert checkpoint_file is not None
                    checkpoint_file.save(Checkpoint(k, s, done, most, resume.seconds + time.perf_counter() - started))

                result = attack(model, chunk, criterion=criterion, rho=rho, seed=config.seed + k, on_batch=on_batch,
                                resume=state, on_pass=on_pass if checkpoint_file is not None else None)
                rho, chunk_passes, chunk_stats = result.rho, result.passes, result.stats
            total, passes = total + chunk_stats, max(passes, chunk_passes)
    finally:
        bar.close()
    assert rho is not None
    return rho, total, passes


def _refuse_another_finished(store: Store, identity: Fingerprint) -> None:
    """A finished UAP in ``store`` (its ``metrics.json``) is replaced only by the same run (``identity``), which makes
    it again: one of other settings, another model or other images is refused in one line before any compute, as
    another run's checkpoint is."""
    if not store.exists("metrics.json"):
        return
    try:
        then = json.loads(store.read_text("metrics.json")).get("fingerprint")
    except (ValueError, AttributeError):
        return  # not a record this check can read: nothing of a run's identity to keep
    if then is None or then == identity.parts:
        return
    random_then, random_now = (parts.get("images") == RANDOM_CONTROL for parts in (then, identity.parts))
    differs = ("a UAP made from images then, the random control now" if random_now and not random_then else
               "the random control then, a UAP made from images now" if random_then and not random_now else
               identity.differences(then))
    raise InputError(f"{store.path('metrics.json')}: the finished UAP of a different run ({differs}); use another "
                     "output location, or remove it to replace that UAP")


def run_uap(config: UAPConfig, *, target: Target | None = None, source: SourceImages | None = None,
            clean: Tensor | None = None, controls: dict[tuple, Tensor] | None = None, progress: bool = True,
            telemetry: Telemetry | None = None, figures: bool = True, results: ResultsKey | None = None,
            log: Callable[[str], None] | None = None) -> RunRecord:
    """Run one UAP end to end and write its files into ``config.out`` (and its row into ``results``).

    ``target``, ``source`` and ``clean`` (the clean test labels) may be handed in already loaded, as the
    reproduction does for its many UAPs; otherwise they are loaded and checked here, before any compute.
    ``controls``, a dict the caller keeps per model, holds the test labels under each random control this run and
    the caller's earlier runs predicted, by radius, p, seed and prediction settings: the UAPs of an audit share a
    few controls, which are then predicted once. ``log`` gets the warning of a configuration in the weak regime
    (:func:`raylab.core.weak_regime`).
    """
    if target is None:
        target = load_target(config.model, config.medical, target=config.target, zeta=config.zeta, p=config.p,
                             device=config.device)
    if source is None:
        source = load_source(config, target)
    store = Store.at(config.out)
    store.makedirs()  # an output location that cannot be one is refused now, not after the compute
    if log is not None and source.images is not None:
        n = len(source.images) if config.method == "sgd" else min(len(source.images), config.chunk_size)  # ρ per chunk
        warning = weak_regime(n, config.effective_batch_size, passes=config.max_passes or 1, method=config.method)
        if warning:
            log(warning)
    telemetry = telemetry if telemetry is not None else Telemetry()
    telemetry.skipped(images=len(source.source.skipped))
    checkpoint_file, resume = None, None

    def identify() -> Fingerprint:  # hashes the weights and the images, once per run
        return fingerprint(config, target.model, source.images, target.radius)

    if source.images is not None:
        checkpoint_file = uap_checkpoint(store, identify, every=config.checkpoint_seconds)
        resume = checkpoint_file.load()  # another run's checkpoint is refused here, before any compute
        if resume is not None and log is not None:
            log(f"resuming from {checkpoint_file.where}: {resume.describe(len(source.images), config)}")
    identity = checkpoint_file.fingerprint if checkpoint_file is not None else identify()
    _refuse_another_finished(store, identity)
    model = for_inference(target.model, device=config.device, amp=config.amp, compile=config.compile)
    started = time.perf_counter()
    stats, passes = StepStats(), 0
    if source.images is None:
        rho = random_uap(target.image_shape, radius=target.radius, p=config.p, seed=config.seed)
    else:
        rho, stats, passes = generate(config, model, source.images, target.criterion, target.radius,
                                      progress=progress, telemetry=telemetry, resume=resume, checkpoint_file=checkpoint_file)
    seconds = time.perf_counter() - started + (resume.seconds if resume is not None else 0.0)
    clip = VALID_RANGE if config.clip else None
    medical = target.medical

    def predict(images: Tensor, rho: Tensor | None) -> Tensor:
        return predict_labels(model, images, rho=rho, clip=clip, amp=config.amp)

    control = (target.radius, str(config.p), config.seed, config.clip, config.amp, config.compile)
    evaluation = evaluate(predict, rho, test_images=medical.test_images, test_labels=medical.test_labels,
                          class_names=target.class_names, target=target.target, radius=target.radius, p=config.p,
                          seed=config.seed, clean=clean, controlled=None if controls is None else controls.get(control))
    if controls is not None:
        controls[control] = evaluation.controlled
    info = source.source
    if source.images is not None:
        composition = label_composition(predict(source.images, None), num_classes=len(target.class_names))
        info = dataclasses.replace(info, label_composition=by_class(composition, target.class_names))
    spec = target.model.spec
    record = RunRecord(
        attack=config.attack_only(), config=config.to_dict(), model=str(config.model), arch=spec.arch,
        image_size=spec.image_size or 0, medical=str(config.medical), radius=target.radius, source=info,
        build=Build(images=stats.images, active=stats.active, accepted=stats.accepted, passes=passes, seconds=seconds,
                    workers=1, batch_size=config.effective_batch_size),
        evaluation=evaluation, fingerprint=identity.parts, **RunRecord.norms(rho))
    what = "random control" if source.images is None else f"UAP from {Path(info.location).name}"
    shown = Figures(examples=config.examples, test_images=medical.test_images,
                    title=f"{what}, L{config.p} zeta={config.zeta:g}, {evaluation.headline_text()}") if figures else None
    written = write_run(record, rho, store, figures=shown, results=results)
    if checkpoint_file is not None:
        checkpoint_file.remove()  # the record holds the UAP now; a rerun makes it again
    return written

"""Training: natural-image pretraining of a backbone, then transfer learning on a medical set.

The paper (Section 2.1) fine-tunes ImageNet-pretrained networks with SGD and
momentum, augmentation and class-balanced data; Section 3.3 compares models
trained from random initialization. No ImageNet weights can be downloaded
offline, so :func:`pretrain_natural` gives an honest CPU-scale stand-in:
exemplar training (Dosovitskiy et al., 2014), each natural photo its own class
under strong augmentation, which learns natural-image features from a few
thousand photos without labels.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .core.metrics import predict_labels
from .core.pixels import to_model_space
from .data.medical import MedicalSet
from .config import check, check_seed, option, require_device
from .errors import InputError
from .models import Classifier, ModelSpec, build_model

OnEpoch = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FitState:
    """Where training stands after ``epoch`` epochs: enough to continue it into the weights of a run never stopped
    (the model, the optimizer's momentum, the schedule, the generator of the sampling and augmentation, torch's
    global generator for dropout on the CPU and, on a GPU, the device's, and the history so far). Handed out after
    every epoch; a later call resumes from it. On the CPU the continuation is exact; on a GPU it is as deterministic
    as the GPU's kernels (cuDNN's are not, unless ``torch.backends.cudnn.deterministic``)."""

    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: Tensor
    rng: Tensor
    history: tuple[dict[str, Any], ...]
    #: The CUDA device's generator (dropout on a GPU); None on the CPU, and in checkpoints written before it was kept.
    cuda_rng: Tensor | None = None


OnState = Callable[[FitState], None]


def epoch_line(row: dict[str, Any]) -> str:
    """One epoch's row of the training history as one line (``epoch=2  loss=0.3127  ...``), for progress output."""
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Fine-tuning (``raylab train``): SGD with momentum and a one-cycle schedule; class-balanced sampling and
    augmentation by default (Section 2.1)."""

    epochs: int = option(3, "training epochs")
    batch_size: int = option(64, "images per SGD step")
    lr: float = option(0.05, "peak learning rate of the one-cycle schedule")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    balanced: bool = option(True, "class-balanced sampling (--no-balance: plain)", flag="--balance")
    augment: bool = True
    seed: int = option(0, "seed of the initialization, the sampling and the augmentation")
    device: str = option("cpu", "cpu or cuda[:N]")
    checkpoint_seconds: float = option(60.0, "write a checkpoint (<out>.partial) at the end of an epoch once this many "
                                             "seconds passed since the last (0: every epoch); rerun to resume")

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(math.isfinite(self.checkpoint_seconds) and self.checkpoint_seconds >= 0,
              f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        check(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        check(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check_seed(self.seed)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """Exemplar pretraining on natural photos (``raylab pretrain``): longer, larger batches, no class balancing."""

    epochs: int = option(30, "training epochs")
    batch_size: int = option(128, "images per SGD step")
    lr: float = option(0.1, "peak learning rate of the one-cycle schedule")
    balanced: bool = False


def augment(x: Tensor, g: torch.Generator, *, scale: tuple[float, float], shift: float, flip: bool,
            jitter: float, gray_p: float) -> Tensor:
    """Batched random zoom/shift/flip and brightness/contrast jitter on model-space images."""
    n = len(x)

    def u(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    s = u(*scale)
    mirror = torch.rand(n, generator=g) < (0.5 if flip else 0.0)
    sx = s * torch.where(mirror, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, s
    theta[:, 0, 2], theta[:, 1, 2] = u(-1, 1) * (1 - s + shift), u(-1, 1) * (1 - s + shift)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = u(1 - jitter, 1 + jitter).view(n, 1, 1, 1).to(x.device)
        brightness = u(-jitter, jitter).view(n, 1, 1, 1).to(x.device)
        x = (x - mean) * contrast + mean + brightness
    if gray_p and x.shape[1] == 3:
        gray = x.mean(dim=1, keepdim=True).expand_as(x)
        pick = (torch.rand(n, generator=g) < gray_p).view(n, 1, 1, 1).to(x.device)
        x = torch.where(pick, gray, x)
    return x.clamp(-1.0, 127 / 128)


#: Strong augmentation for exemplar pretraining; the gray share prepares features for gray medical images.
PRETRAIN_AUG = dict(scale=(0.45, 1.0), shift=0.1, flip=True, jitter=0.4, gray_p=0.5)
#: Mild augmentation for fine-tuning on medical images (small zoom and shift, no flips).
FINETUNE_AUG = dict(scale=(0.9, 1.0), shift=0.08, flip=False, jitter=0.1, gray_p=0.0)


def _fit(model: Classifier, images: Tensor, labels: Tensor, config: TrainConfig, aug: dict[str, Any],
         on_epoch: OnEpoch | None, evaluate: Callable[[], dict[str, float]] | None = None, *,
         resume: FitState | None = None, on_state: OnState | None = None) -> list[dict[str, Any]]:
    require_device(config.device)
    device = torch.device(config.device)
    model.to(device)
    g = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = max(1, len(images) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy="cos")
    weights = _balanced_weights(labels) if config.balanced else None
    history: list[dict[str, Any]] = []
    if resume is not None:
        if not 1 <= resume.epoch <= config.epochs:
            raise InputError(f"cannot resume after epoch {resume.epoch} of a training of {config.epochs} epochs")
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict(resume.scheduler)
        g.set_state(resume.generator)
        torch.set_rng_state(resume.rng)
        if resume.cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(resume.cuda_rng, device)
        history = list(resume.history)
    for epoch in range(len(history) + 1, config.epochs + 1):
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = (torch.multinomial(weights, len(images), replacement=True, generator=g) if weights is not None
                 else torch.randperm(len(images), generator=g))
        for idx in order[: steps_per_epoch * config.batch_size].split(config.batch_size):
            x = to_model_space(images[idx]).to(device)
            y = labels[idx].to(device)
            if config.augment:
                x = augment(x, g, **aug)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        model.eval()
        row = {"epoch": epoch, "loss": total / seen, "train_accuracy": correct / seen,
               "seconds": time.perf_counter() - started}
        if evaluate is not None:
            row.update(evaluate())
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if on_state is not None:
            on_state(FitState(epoch, model.state_dict(), opt.state_dict(), sched.state_dict(), g.get_state(),
                              torch.get_rng_state(), tuple(history),
                              torch.cuda.get_rng_state(device) if device.type == "cuda" else None))
    return history


def _balanced_weights(labels: Tensor) -> Tensor:
    """Sampling weights that give every class the same expected share of each epoch."""
    counts = torch.bincount(labels).clamp(min=1).to(torch.float64)
    return (1.0 / counts)[labels]


def pretrain_natural(images: Tensor, *, spec: ModelSpec, config: TrainConfig, labels: Tensor | None = None,
                     on_epoch: OnEpoch | None = None, resume: FitState | None = None,
                     on_state: OnState | None = None) -> Classifier:
    """Exemplar pretraining on uint8 RGB photos: image i is class i (or ``labels`` when given). ``on_state`` gets the
    state after every epoch, from which ``resume`` continues a stopped run (:mod:`raylab.training_checkpoint`)."""
    if labels is None:
        labels = torch.arange(len(images))
    if spec.num_classes != int(labels.max()) + 1:
        raise InputError(f"spec has {spec.num_classes} classes but the labels need {int(labels.max()) + 1}")
    model = build_model(spec, seed=config.seed)
    _fit(model, images, labels, config, PRETRAIN_AUG, on_epoch, resume=resume, on_state=on_state)
    return model.eval()


def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256) -> float:
    """Share of images classified as their label."""
    if len(images) == 0:
        return float("nan")
    return float((predict_labels(model, images, batch_size=batch_size).cpu() == labels).float().mean())


def finetune(data: MedicalSet, *, spec: ModelSpec, config: TrainConfig, backbone_weights: str | Path | None = None,
             on_epoch: OnEpoch | None = None, resume: FitState | None = None,
             on_state: OnState | None = None) -> tuple[Classifier, dict[str, Any]]:
    """Transfer learning from ``backbone_weights`` (or training from random initialization when None).

    Returns the model (eval mode) and metrics: test accuracy, per-epoch history,
    and whether it was trained from scratch (Section 3.3's comparison). ``on_state`` gets the state after every
    epoch, from which ``resume`` continues a stopped run (:mod:`raylab.training_checkpoint`).
    """
    spec = spec.validate()
    if data.image_size != spec.image_size:
        data = data.resized(spec.image_size)
    if data.channels != spec.in_channels:
        raise InputError(f"{data.name}: images have {data.channels} channel(s) but the model expects {spec.in_channels}")
    started = time.perf_counter()
    model = build_model(spec, backbone_weights, seed=config.seed)

    def evaluate() -> dict[str, float]:
        return {"val_accuracy": accuracy(model, data.val_images, data.val_labels)} if len(data.val_images) else {}

    history = _fit(model, data.train_images, data.train_labels, config, FINETUNE_AUG, on_epoch, evaluate, resume=resume,
                   on_state=on_state)
    model.eval()
    metrics = {
        "arch": spec.arch, "image_size": spec.image_size, "dataset": data.name,
        "from_scratch": backbone_weights is None,
        "test_accuracy": accuracy(model, data.test_images, data.test_labels),
        "train_seconds": time.perf_counter() - started,
        "config": asdict(config),
        "history": history,
    }
    return model, metrics

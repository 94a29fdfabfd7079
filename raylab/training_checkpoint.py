"""Training's checkpoint: `raylab train`, `raylab pretrain` and the reproduction's models resume after a crash.

Fine-tuning the paper's networks, or pretraining a backbone, is minutes to hours; a run that stops resumes from its
last epoch and ends with the weights of a run never stopped (:class:`~raylab.train.FitState`: the model, the
optimizer's momentum, the schedule and the generators). The checkpoint lies beside the model file it will become,
``<out>.partial`` (``model.pt.partial``), written atomically through :class:`~raylab.store.Store` at the end of an
epoch once ``every`` seconds have passed since the last write, and removed once the model is written.

It is resumed only by the same training (:class:`~raylab.fingerprint.Fingerprint`: the settings, the model's
spec, the backbone's weights and the images); another's is refused in one line naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from .data.medical import MedicalSet
from .fingerprint import CheckpointFile, Fingerprint, tensor_digest
from .models import ModelSpec
from .progress import duration
from .store import Store
from .train import FitState, TrainConfig

SUFFIX = ".partial"
FORMAT = "raylab.training-checkpoint/1"
#: What :func:`pretraining` and :func:`finetuning` return: the checkpoint, and the state to resume from (None: none).
Resumed = tuple[CheckpointFile[FitState], FitState | None]


def pretraining(out: str | Path, config: TrainConfig, spec: ModelSpec, images: torch.Tensor, *,
                log: Callable[[str], None]) -> Resumed:
    """The checkpoint of exemplar pretraining on ``images`` (to be written to ``out``) and the state to resume from."""
    return _start(out, config, lambda: {"spec": asdict(spec), "images": tensor_digest([("images", images)])[:16]},
                  log=log)


def finetuning(out: str | Path, config: TrainConfig, spec: ModelSpec, data: MedicalSet, backbone: str | Path | None, *,
               log: Callable[[str], None]) -> Resumed:
    """The checkpoint of fine-tuning from ``backbone`` on ``data``'s training split (to be written to ``out``) and the
    state to resume from."""
    return _start(out, config, lambda: {"spec": asdict(spec), "backbone": _weights_digest(backbone),
                                        "data": tensor_digest([("images", data.train_images),
                                                               ("labels", data.train_labels)])[:16]}, log=log)


def _settings(config: TrainConfig) -> dict[str, Any]:
    """A training config's fields that determine the weights (not the device, nor how often to checkpoint)."""
    return {k: v for k, v in asdict(config).items() if k not in ("device", "checkpoint_seconds")}


def _weights_digest(weights: str | Path | None) -> str | None:
    """A backbone's identity: its file's sha256, or the name it was given by (``imagenet``), None for none."""
    if weights is None or not Path(weights).is_file():
        return None if weights is None else str(weights)
    return hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]


def _start(out: str | Path, config: TrainConfig, parts: Callable[[], dict[str, Any]], *,
           log: Callable[[str], None]) -> Resumed:
    """The checkpoint ``<out>.partial`` of ``config``'s training on what ``parts`` describes (hashed only when a
    checkpoint is read or written) and the state to resume from (said in one line), or None; InputError, before any
    compute, for another training's checkpoint."""
    store, name = Store.beside(out)
    checkpoint = CheckpointFile(store, name + SUFFIX, format=FORMAT, what="training", every=config.checkpoint_seconds,
                                identify=lambda: Fingerprint.of({**_settings(config), **parts()}), dump=_dump,
                                parse=_parse)
    state = checkpoint.load()
    if state is not None:
        kept = sum(row.get("seconds", 0.0) for row in state.history)
        log(f"resuming from {checkpoint.where}: after epoch {state.epoch} of {config.epochs} "
            f"({duration(kept)} of training kept)")
    return checkpoint, state


def _dump(state: FitState) -> dict:
    return {"epoch": state.epoch, "model": {k: v.detach().cpu() for k, v in state.model.items()},
            "optimizer": state.optimizer, "scheduler": state.scheduler, "generator": state.generator, "rng": state.rng,
            "history": json.dumps(list(state.history)), "cuda_rng": state.cuda_rng}


def _parse(obj: dict) -> FitState:
    return FitState(obj["epoch"], obj["model"], obj["optimizer"], obj["scheduler"], obj["generator"], obj["rng"],
                    tuple(json.loads(obj["history"])), obj.get("cuda_rng"))

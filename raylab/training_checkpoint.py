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
import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from .data.medical import MedicalSet
from .fingerprint import Fingerprint, read_checkpoint, tensor_digest
from .models import ModelSpec
from .progress import duration
from .store import Store
from .target import medical_digest
from .train import FitState, TrainConfig

SUFFIX = ".partial"
FORMAT = "raylab.training-checkpoint/1"
#: What :func:`pretraining` and :func:`finetuning` return: the checkpoint, and the state to resume from (None: none).
Resumed = tuple["TrainingCheckpoint", FitState | None]


def pretraining(out: str | Path, config: TrainConfig, spec: ModelSpec, images: torch.Tensor, *,
                log: Callable[[str], None]) -> Resumed:
    """The checkpoint of exemplar pretraining on ``images`` (to be written to ``out``) and the state to resume from."""
    return _start(out, {**_settings(config), "spec": asdict(spec), "images": tensor_digest([("images", images)])[:16]},
                  every=config.checkpoint_seconds, log=log)


def finetuning(out: str | Path, config: TrainConfig, spec: ModelSpec, data: MedicalSet, backbone: str | Path | None, *,
               log: Callable[[str], None]) -> Resumed:
    """The checkpoint of fine-tuning from ``backbone`` on ``data`` (to be written to ``out``) and the state to resume
    from."""
    return _start(out, {**_settings(config), "spec": asdict(spec), "backbone": _weights_digest(backbone),
                        "data": medical_digest(data)}, every=config.checkpoint_seconds, log=log)


def _settings(config: TrainConfig) -> dict[str, Any]:
    """A training config's fields that determine the weights (not the device, nor how often to checkpoint)."""
    return {k: v for k, v in asdict(config).items() if k not in ("device", "checkpoint_seconds")}


def _weights_digest(weights: str | Path | None) -> str | None:
    """A backbone's identity: its file's sha256, or the name it was given by (``imagenet``), None for none."""
    if weights is None or not Path(weights).is_file():
        return None if weights is None else str(weights)
    return hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]


def _start(out: str | Path, parts: dict[str, Any], *, every: float, log: Callable[[str], None]) -> Resumed:
    """The checkpoint of the training ``parts`` describes and the state to resume from (said in one line), or None;
    InputError, before any compute, for another training's checkpoint."""
    checkpoint = TrainingCheckpoint(out, Fingerprint.of(parts), every=every)
    state = checkpoint.load()
    if state is not None:
        kept = sum(row.get("seconds", 0.0) for row in state.history)
        log(f"resuming from {checkpoint.where}: after epoch {state.epoch} of {parts['epochs']} "
            f"({duration(kept)} of training kept)")
    return checkpoint, state


class TrainingCheckpoint:
    """``<out>.partial``: :meth:`load` before training, :meth:`save` after each epoch, :meth:`remove` once the model
    is written."""

    def __init__(self, out: str | Path, identity: Fingerprint, *, every: float) -> None:
        self.store, model_name = Store.beside(out)
        self.name, self.identity, self.every = model_name + SUFFIX, identity, every
        self._last = time.monotonic()

    @property
    def where(self) -> str:
        return self.store.path(self.name)

    def load(self) -> FitState | None:
        """This training's state, None when there is none; InputError for another's or an unreadable one."""
        return read_checkpoint(self.store, self.name, format=FORMAT, identity=self.identity, what="training",
                               parse=_parse)

    def save(self, state: FitState) -> bool:
        """Write ``state`` when ``every`` seconds have passed since the last write; True if written."""
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "parts": json.dumps(self.identity.parts), "epoch": state.epoch,
                    "model": {k: v.detach().cpu() for k, v in state.model.items()}, "optimizer": state.optimizer,
                    "scheduler": state.scheduler, "generator": state.generator, "rng": state.rng,
                    "history": json.dumps(list(state.history))}, buf)
        self.store.write_bytes(self.name, buf.getvalue())
        self._last = now
        return True

    def remove(self) -> None:
        self.store.remove(self.name)


def _parse(obj: dict) -> FitState:
    return FitState(obj["epoch"], obj["model"], obj["optimizer"], obj["scheduler"], obj["generator"], obj["rng"],
                    tuple(json.loads(obj["history"])))

"""Worker actors: one model replica each (one per GPU, or per CPU slot), computing one batch's part of a round:
the paper's batched update or the stochastic-gradient method's summed gradient.

A worker is stateless between calls apart from its model, so a worker that
dies is restarted by Ray (``max_restarts``) and the driver redoes its call
with the same batch and the same ρ: the redone update is the same update.
The driver, not Ray, retries calls (``max_task_retries=0``), so a batch whose
update kills its worker every time is tried a bounded number of times and
then named in the run's error, instead of being retried for ever.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor

from ..core import Criterion, StepStats, Untargeted, batch_gradient, batch_update, masked_update, predict_labels
from ..core.fgsm import StepNorm
from ..data.jpeg import EncodedBatch, decode_batch
from ..models import for_inference, load_classifier
from ..telemetry import Telemetry, ray_sink
from .staging import Staging
from .transport import from_wire


@dataclass(frozen=True)
class Update:
    """What a worker's ``update`` returns for one batch."""

    step: Tensor  # the summed accepted steps (paper) or gradients (sgd), on the CPU
    stats: StepStats
    timing: dict[str, float]  # compute_seconds, idle_seconds
    labels: Tensor | None = None  # C(x) computed here (None when handed in, or not needed)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # images the device could not decode
    staged: bool = False  # the batch was on the device before the update began (:mod:`raylab.engine.staging`)


class UAPWorker:
    """Holds a classifier and applies the batched update rule (Section 2.2) to the batches it is given.

    :data:`WorkerActor` is this class as a Ray actor.
    """

    def __init__(self, checkpoint: bytes, *, device: str, amp: bool, threads: int, name: str = "model", index: int = 0,
                 tags: dict[str, str] | None = None, static_shapes: bool = False, compile: bool = False) -> None:
        torch.set_num_threads(max(1, threads))
        self.index, self.telemetry = index, Telemetry(ray_sink(), **(tags or {}))
        self.device = torch.device(device)
        classifier = load_classifier(checkpoint, map_location=str(self.device), name=name)
        self.channels = classifier.spec.in_channels
        self.model = for_inference(classifier, device=str(self.device), amp=amp, compile=compile)
        self.amp, self.static_shapes = amp, static_shapes
        self.staging = Staging(self.device)
        self.last_end: float | None = None

    @ray.method(concurrency_group="staging")
    def stage(self, images: np.ndarray | Tensor | EncodedBatch | None, key: int) -> bool:
        """Copy the batch of the update ``key`` to the device while the current update computes (in the actor's
        ``staging`` thread, :mod:`raylab.engine.staging`); True when it was staged. An encoded batch or a pass's
        end has nothing to copy; a copy that fails is left to the update, which copies the batch itself."""
        images = from_wire(images)
        if not isinstance(images, Tensor):
            return False
        try:
            return self.staging.put(key, images)
        except Exception:  # e.g. out of device memory: the update copies it, as unstaged batches are
            return False

    def update(self, images: np.ndarray | Tensor | EncodedBatch, rho: Tensor, *, method: str, criterion: Criterion,
               clip: tuple[float, float] | None, eps: float = 0.0, step_norm: StepNorm = "sign", loss_clamp: float = 10.0,
               clean: Tensor | None = None, staged: int | None = None) -> Update:
        """One batch against ``rho``: the sum of its accepted FGSM steps (``method="paper"``,
        :func:`raylab.core.batch_update`) or the sum of its images' gradients of the loss (``"sgd"``,
        :func:`raylab.core.batch_gradient`).

        Clean labels first, where the criterion needs them: ``clean`` when the driver has them from the batch's first
        pass (:mod:`raylab.engine.labels`), else computed here and returned. ``staged``: the key under which
        :meth:`stage` was asked to copy the batch ahead; without a staged copy the update copies it. An :class:`EncodedBatch`
        (``--decode-on worker``) is decoded here first, on the device; what cannot be decoded is left out and named
        in ``skipped``."""
        started = time.perf_counter()
        idle = 0.0 if self.last_end is None else started - self.last_end
        skipped: list[tuple[str, str]] = []
        images = from_wire(images)
        x = None if staged is None else self.staging.take(staged)
        was_staged = x is not None
        if isinstance(images, EncodedBatch):
            x, skipped = decode_batch(images, channels=self.channels, device=self.device)
        elif x is None:
            x = images.to(self.device, non_blocking=True)  # uint8 from the readers: converted on the device
        computed = None
        if not len(x):  # every image of the batch failed to decode on the device
            self.last_end = time.perf_counter()
            return Update(torch.zeros(rho.shape), StepStats(), {"compute_seconds": self.last_end - started,
                                                                "idle_seconds": idle}, None, skipped)
        if not isinstance(criterion, Untargeted):
            clean = torch.zeros(len(x), dtype=torch.long, device=self.device)  # targeted rules never read clean labels
        elif clean is not None and len(clean) == len(x):  # (a batch whose decoding lost an image computes them anew)
            clean = clean.to(self.device, dtype=torch.long, non_blocking=True)
        else:
            clean = computed = predict_labels(self.model, x, batch_size=len(x) or 1, amp=self.amp).to(self.device)
        if method == "sgd":
            total, active = batch_gradient(self.model, x, clean, rho.to(self.device), criterion=criterion,
                                           loss_clamp=loss_clamp, clip=clip, amp=self.amp)
            stats = StepStats(len(x), int(active), len(x))  # every image's gradient goes into the step
        elif self.static_shapes:
            masked = masked_update(self.model, x, clean, rho.to(self.device), eps=eps, criterion=criterion,
                                   step_norm=step_norm, clip=clip, amp=self.amp)
            total, stats = masked.step, StepStats(*masked.counts.tolist())
        else:
            upd = batch_update(self.model, x, clean, rho.to(self.device), eps=eps, criterion=criterion,
                               step_norm=step_norm, clip=clip, amp=self.amp)
            total, stats = upd.step, upd.stats
        step = total.cpu()
        self.last_end = time.perf_counter()
        self.telemetry.step_time(worker=self.index, seconds=self.last_end - started)
        return Update(step, stats, {"compute_seconds": self.last_end - started, "idle_seconds": idle},
                      None if computed is None else computed.cpu(), skipped, was_staged)

    def predict(self, images: np.ndarray | Tensor, rho: Tensor | None = None, clip: tuple[float, float] | None = None) -> Tensor:
        """Labels of ``images`` (under ``images + rho`` when given): the distributed evaluation."""
        return predict_labels(self.model, from_wire(images), rho=rho, clip=clip, amp=self.amp).cpu()

    @ray.method(max_task_retries=-1)
    def pid(self) -> int:
        """This worker's process id; retried by Ray while the actor restarts, so it also waits for a restart."""
        return os.getpid()

    def node(self) -> str:
        """The id of the Ray node this worker runs on."""
        return ray.get_runtime_context().get_node_id()


def worker_actor(cls: type[UAPWorker] = UAPWorker) -> Any:
    """``cls`` as the engine's worker actor: restarted by Ray whenever its process dies, its calls retried by the
    driver, not by Ray; ``stage`` runs in a thread of its own beside the updates (one call at a time each)."""
    return ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"staging": 1})(cls)


#: The worker actor (:func:`worker_actor`).
WorkerActor = worker_actor()

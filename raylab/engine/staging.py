"""A worker's next batch, copied to its device while the worker computes the current one (issue 18).

A worker's update starts by copying its batch from the object store (host memory) to its device, and on a GPU the
model waits for that copy: 65 MiB for 256 images at 3x299x299, about 3-7 ms at pageable-copy rates (an estimate, not
measured here), against about 51 ms of compute per batch at the 5,000 images/s goal. The driver knows each worker's
next batch a round ahead (its reader decodes it while this round computes), so it also hands that batch to the
worker's ``stage`` method, which runs in a thread of its own (a Ray concurrency group) and copies it to the device on
a side stream while this round's update computes; the next update takes it from :class:`Staging`, ready, its stream
waiting on that copy's event alone (the side-stream copy of :mod:`raylab.core.transfer`).

Keys are the driver's numbers of a worker's batches, increasing. An update whose batch is not staged (its stage
call came late or failed, or the worker was restarted and lost what it held) copies the batch itself and makes a
late copy of it a no-op, so which path ran never changes the update: only when its copy happened.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from ..core.transfer import copy_on, ready_here


class Staging:
    """Batches copied to ``device`` ahead of their update, by key; safe to use from the staging and update threads."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._ready: dict[int, tuple[Tensor, torch.cuda.Event | None]] = {}
        self._copying: dict[int, threading.Event] = {}
        self._taken = -1  # the highest key an update has asked for: later copies of it or older keys are dropped
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(self, key: int, images: Tensor) -> bool:
        """Copy ``images`` to the device for the update of batch ``key``; False when that update has already run."""
        with self._lock:
            if key <= self._taken or key in self._ready or key in self._copying:
                return False
            done = self._copying[key] = threading.Event()
        try:
            staged = self._copy(images)
            with self._lock:
                if key <= self._taken:
                    return False
                self._ready[key] = staged
            return True
        finally:
            with self._lock:
                del self._copying[key]
            done.set()

    def take(self, key: int) -> Tensor | None:
        """The staged batch ``key``, ready for the current stream to read (waiting for a copy under way), or None
        when it was not staged; older batches still held are dropped."""
        with self._lock:
            copying = self._copying.get(key)
        if copying is not None:
            copying.wait()
        with self._lock:
            self._taken = max(self._taken, key)
            staged = self._ready.pop(key, None)
            for old in [k for k in self._ready if k < key]:
                del self._ready[old]
        if staged is None:
            return None
        x, copied = staged
        return x if copied is None else ready_here(x, copied, self.device)

    def held(self) -> int:
        """How many staged batches are held (at most the next one or two)."""
        with self._lock:
            return len(self._ready)

    def _copy(self, images: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
        if self._stream is None or images.device.type == "cuda":
            return images.to(self.device), None  # nothing to copy: a CPU worker reads the store's memory as it is
        # from the store's pageable memory: the copy holds this (staging) thread, not the update's stream
        return copy_on(self._stream, images, self.device)

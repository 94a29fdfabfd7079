"""The medical test images' labels under ρ, computed in parallel on the engine's workers, for
:func:`raylab.evaluation.evaluate` (Section 2.2-2.3: R_f, R_s and the random control on the test set).

The test images go into the object store once per run, one chunk per worker (as arrays, :mod:`.transport`), and
every evaluation reuses them (the ``eval_every`` history, the final one), so the driver's node holds the model and
the test set, nothing that grows with evaluations or the stream. C(x) of the test images does not depend on ρ: it is
computed once.
"""

from __future__ import annotations

from typing import Any

import ray
import torch
from torch import Tensor

from .transport import to_wire


class WorkerPredict:
    """``predict(images, rho)`` on the workers (the ``Predict`` that :func:`raylab.evaluation.evaluate` takes), the
    chunks of ``test_images`` kept in the object store, and :meth:`clean`, C(x) of the test images, kept."""

    def __init__(self, workers: list[Any], test_images: Tensor, clip: tuple[float, float] | None) -> None:
        self.workers, self.test_images, self.clip = workers, test_images, clip
        self._test_refs: list[Any] | None = None
        self._clean: Tensor | None = None

    def __call__(self, images: Tensor, rho: Tensor | None) -> Tensor:
        if images is self.test_images and self._test_refs is not None:
            refs = self._test_refs
        else:  # clone: a chunk is a view, and a pickled view carries its whole base tensor
            refs = [ray.put(to_wire(chunk.clone())) for chunk in images.chunk(len(self.workers))]
            if images is self.test_images:
                self._test_refs = refs
        rho_ref = None if rho is None else ray.put(rho)
        futures = [self.workers[i].predict.remote(chunk, rho_ref, self.clip) for i, chunk in enumerate(refs)]
        return torch.cat(ray.get(futures))

    def clean(self) -> Tensor:
        """C(x) of the test images, computed on the first call."""
        if self._clean is None:
            self._clean = self(self.test_images, None)
        return self._clean

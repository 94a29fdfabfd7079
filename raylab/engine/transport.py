"""How a batch of images travels from a reader to a worker through Ray's object store: as a NumPy array.

Ray passes a NumPy array zero-copy: the worker's array is a read-only view of the object store's shared memory.
A torch tensor is pickled instead, and its bytes are copied out of the store before the worker's method starts.
Measured on this project's 2-core CPU machine (``benchmarks/transport.py``, ``docs/bench/cpu-transport.json``; also
``raylab bench --engine``'s ``transport_*``): a 256-image uint8 batch of real photos at 3x299x299 (65 MiB) took
72 ms from submit to the method's start as a tensor and 2.4 ms as an array (30x), the same time after that to
convert it. At the GPU goal of 5,000 images/s, that copy alone would be longer than the batch's compute (51 ms).

The worker's tensor shares the store's read-only memory, so nothing may write to it in place: the workers only
copy it to their device or convert it (``to_model_space``), both of which make new tensors.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor


def to_wire(images: Any) -> Any:
    """What a reader returns for a batch: a uint8 (or any CPU) tensor as its NumPy array; anything else unchanged
    (an encoded batch for ``--decode-on worker``, the None of a pass end)."""
    return images.numpy() if isinstance(images, Tensor) else images


def from_wire(images: Any) -> Any:
    """The worker's side of :func:`to_wire`: an array as a tensor over the same (read-only) memory."""
    if not isinstance(images, np.ndarray):
        return images
    with warnings.catch_warnings():  # the array is read-only; the tensor is only read (module docstring)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images)

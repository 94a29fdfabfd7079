"""The pixel space every UAP lives in.

The authors' code (MedicalAI-UAP ``utils/data.py``) maps raw 0-255 images by
``(x - 128) / 128`` before the model sees them; a UAP is one tensor in that
space, and any further normalization (ImageNet mean/std, gray-to-RGB) belongs
to the model wrapper (:mod:`raylab.models`).
"""

from __future__ import annotations

import torch
from torch import Tensor

OFFSET = 128.0
SCALE = 128.0
#: The valid range of a mapped image: 0 -> -1.0, 255 -> 127/128.
VALID_RANGE = ((0.0 - OFFSET) / SCALE, (255.0 - OFFSET) / SCALE)
#: The largest side, in pixels, of an image a model takes or a shard stores (the paper's models take 224-299 px;
#: a larger size is a typo that would exhaust memory decoding every image).
MAX_IMAGE_SIZE = 4096


def to_model_space(x: Tensor) -> Tensor:
    """Raw 0-255 pixels (any dtype) -> float32 ``(x - 128) / 128``."""
    return (x.to(torch.float32) - OFFSET) / SCALE


def to_unit_range(x: Tensor) -> Tensor:
    """Model space -> [0, 1] (for display and for ImageNet-normalized backbones)."""
    return (x * SCALE + OFFSET) / 255.0


def as_model_input(x: Tensor) -> Tensor:
    """uint8 images are mapped to model space; float images are taken as already mapped."""
    return to_model_space(x) if x.dtype == torch.uint8 else x.to(torch.float32)

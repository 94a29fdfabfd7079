"""JPEGs stored at the model's size, decoded by torchvision.io (libjpeg-turbo) instead of PIL.

``raylab shard --image-size`` stores photos already resized, so the stream's
decoder only has to decode. torchvision's libjpeg-turbo decode gives the same
pixels as PIL's (the same library with the same defaults; tested on real
photos, RGB and gray), about 1.7x faster on one core, and it runs without
Python's lock, so a reader's decode threads scale with its CPUs
(docs/bench/cpu-decode-threads.json). Only what is known to give PIL's pixels
takes this path: a baseline or progressive JPEG whose mode is RGB or L, that
needs no resize, and is not an RGB photo read as gray (PIL's luma and libjpeg's
Y channel differ). Everything else, and any JPEG this decoder refuses, goes to
PIL (:func:`raylab.data.natural.decode_image`), whose message a skipped image
reports. torchvision 0.29 marks its image codecs deprecated in favour of
TorchCodec; where a later torchvision lacks them, every image goes to PIL.
"""

from __future__ import annotations

import torch
from PIL import Image


def eligible(header: Image.Image, *, channels: int, size: int | None) -> bool:
    """Whether ``header`` (an opened, not yet loaded image) decodes here to PIL's exact pixels."""
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return False
    if size is not None and header.size != (size, size):
        return False
    return not (channels == 1 and header.mode == "RGB")


def decode(data: bytes, *, channels: int) -> torch.Tensor | None:
    """uint8 C x H x W (C = ``channels``) from JPEG bytes, or None where libjpeg-turbo refuses them."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError:
        return None

"""JPEGs stored at the model's size, decoded by torchvision.io (libjpeg-turbo) instead of PIL.

``raylab shard --image-size`` stores photos already resized, so the stream's
decoder only has to decode. torchvision's libjpeg-turbo decode gives the same
pixels as PIL's (the same library with the same defaults; tested on real
photos, RGB and gray), 1.6x faster on one core, and it runs without Python's
lock, so a reader's decode threads scale with its CPUs
(docs/bench/cpu-decode-threads.json). Only what is known to give PIL's pixels
takes this path: a JPEG whose mode is RGB or L, that needs no resize, and is not
an RGB photo read as gray (PIL's luma and libjpeg's Y channel differ). Everything else, and any JPEG this decoder refuses, goes to
PIL (:func:`raylab.data.image.decode_image`), whose message a skipped image
reports.

With ``--decode-on worker`` the reader leaves such JPEGs encoded
(:class:`EncodedBatch`) and the worker decodes the batch on its device
(:func:`decode_batch`: nvJPEG on a GPU, libjpeg-turbo on a CPU worker, where it
gives the reader's pixels exactly; nvJPEG's IDCT differs from libjpeg's by about
a level, which a GPU-only test bounds). torchvision 0.29 marks its image codecs
deprecated in favour of TorchCodec; where a later torchvision lacks them, every
image goes to PIL, on the reader and on the worker alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import InputError


def eligible(header: Image.Image, *, channels: int, size: int | None) -> bool:
    """Whether ``header`` (an opened, not yet loaded image) decodes here to PIL's exact pixels."""
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return False
    if size is not None and header.size != (size, size):
        return False
    return not (channels == 1 and header.mode == "RGB")


def decode(data: bytes, *, channels: int) -> torch.Tensor | None:
    """uint8 C x H x W (C = ``channels``) from JPEG bytes, or None where libjpeg-turbo refuses them."""
    return _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), channels=channels, device="cpu")


def _decode_jpeg(data: torch.Tensor | list[torch.Tensor], *, channels: int, device: torch.device | str) -> Any:
    """torchvision's ``decode_jpeg`` of one encoded tensor or a list of them (one nvJPEG call on a CUDA device), or
    None where it refuses them or torchvision has no image codecs."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        return decode_jpeg(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


# -- decoding on the worker's device (``--decode-on worker``) ----------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """A JPEG left encoded by the reader, for the worker's device to decode: its bytes and the shape it decodes to."""

    data: torch.Tensor  # uint8, 1-D: the file's bytes
    shape: tuple[int, int, int]  # C x H x W once decoded


@dataclass(frozen=True)
class EncodedBatch:
    """A batch as the reader ships it with ``--decode-on worker``: JPEGs still encoded (a sixth of the decoded bytes
    at 299 px), the other images decoded on the reader's CPU, in stream order, each named ``<shard>:<key>``."""

    items: list[torch.Tensor | Encoded]
    names: list[str]

    def __len__(self) -> int:
        return len(self.items)


def encoded(data: bytes, header: Image.Image, *, channels: int) -> Encoded:
    """``data`` (a JPEG that :func:`eligible` accepted, ``header`` its opened image) to be decoded on a device."""
    w, h = header.size
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), (channels, h, w))


def decode_batch(batch: EncodedBatch, *, channels: int, device: torch.device | str
                 ) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """The batch's images, uint8 N x C x H x W on ``device`` in stream order, and the ``(name, reason)`` of those
    that cannot be decoded (left out, as the reader skips them).

    The JPEGs are decoded together (on a CUDA device by nvJPEG: one call for the batch); when that call fails, one
    by one, and a JPEG libjpeg refuses goes to PIL on the CPU, whose pixels are used if it decodes it, or whose
    message names the skip.
    """
    from .image import decode_image

    device = torch.device(device)
    where = [i for i, item in enumerate(batch.items) if isinstance(item, Encoded)]
    out: list[torch.Tensor | None] = [None if isinstance(item, Encoded) else item.to(device, non_blocking=True)
                                      for item in batch.items]
    if where:
        data = [batch.items[i].data for i in where]  # type: ignore[union-attr]
        decoded = _decode_jpeg(data, channels=channels, device=device) or [
            _decode_jpeg(d, channels=channels, device=device) for d in data]  # one by one; None goes to PIL below
        for i, image in zip(where, decoded):
            out[i] = image
    images, skipped = [], []
    for i, image in enumerate(out):
        if image is None or tuple(image.shape) != batch.items[i].shape:
            item = batch.items[i]
            try:
                image = decode_image(bytes(item.data.numpy()), channels=channels, size=None, name=batch.names[i],
                                     fast_jpeg=False).to(device)
            except InputError as e:
                skipped.append((batch.names[i], str(e).removeprefix(f"{batch.names[i]}: ")))
                continue
            if tuple(image.shape) != item.shape:
                skipped.append((batch.names[i], f"decodes to {tuple(image.shape)}, its header says {item.shape}"))
                continue
        images.append(image)
    if not images:
        return torch.empty((0, channels, *batch.items[0].shape[1:]), dtype=torch.uint8, device=device), skipped
    return torch.stack(images), skipped

"""One image's bytes to a tensor: the decoder every loader uses (photo folders, shards, CSV folders), and the
record of what a stream could not decode.

Any decoded mode becomes uint8 gray or RGB (16-bit and float gray scaled to 8 bits, alpha composited on white);
with a size, a plain bilinear resize (no crop, so the aspect ratio is not kept), which is how the authors fed
photos to their UAP code. A file that cannot be decoded is an :class:`InputError` naming it; a stream skips it,
counts it and reports it in a :class:`SkipReport`, never fatal.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, one_line
from . import jpeg

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
#: PIL modes of gray images (1-bit, 8-bit, 16/32-bit integer and float gray, gray with alpha): ``channels=None``
#: decodes them to one channel, every other mode to three.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass
class SkipReport:
    """Files skipped from a natural-image stream, as (name, reason) pairs."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many files were skipped."""
        return len(self.skipped)

    def add(self, name: str, reason: str) -> None:
        """Record that ``name`` was skipped because of ``reason``."""
        self.skipped.append((name, reason))


def _sixteen_to_eight(im: Image.Image) -> Image.Image:
    """16-bit ("I;16*"), 32-bit ("I") and float ("F") gray to 8-bit "L".

    "I;16*" is scaled by >> 8 (65535 -> 255). "I" holds 16-bit PNGs in some
    Pillow versions, so it is clipped to 0..65535 and scaled by >> 8 when any
    value exceeds 255, else kept. "F" is clipped to 0..255 and rounded.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        out = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).round()
    else:
        wide = np.clip(arr.astype(np.int64), 0, 65535)
        out = wide >> 8 if im.mode.startswith("I;16") or wide.max(initial=0) > 255 else wide
    return Image.fromarray(out.astype(np.uint8), "L")


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode to "L" or "RGB"; alpha and palette transparency are composited on white."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _sixteen_to_eight(im)
    if mode in ("L", "RGB") and "transparency" not in im.info:
        return im
    if mode == "1":
        return im.convert("L")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(
    data: bytes, *, channels: int | None, size: int | None, max_pixels: int = 89_478_485, name: str = "image",
    fast_jpeg: bool = True,
) -> torch.Tensor:
    """Decode image bytes to a uint8 C x H x W tensor (C = ``channels``, 1 gray or 3 RGB; None: as stored, 1 for an
    image stored gray (:data:`GRAY_MODES`), else 3).

    The whole image is decoded (truncated files fail). More than ``max_pixels``
    pixels is refused before decoding. With ``size``, the image is resized to
    ``size`` x ``size`` with PIL bilinear (plain resize, no crop). Any failure
    is an :class:`InputError` naming ``name``. A JPEG already at ``size`` is
    decoded by libjpeg-turbo through torchvision (:mod:`raylab.data.jpeg`: the
    same pixels, faster, and free of Python's lock); ``fast_jpeg=False`` keeps PIL.
    """
    if channels not in (None, 1, 3):
        raise InputError(f"{name}: channels must be 1 (gray) or 3 (RGB), got {channels}")
    if size is not None and size < 1:
        raise InputError(f"{name}: size must be >= 1, got {size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(f"{name}: {w}x{h} pixels exceeds the limit {max_pixels} (decompression bomb?)")
                if channels is None:
                    channels = 1 if im.mode in GRAY_MODES else 3
                if fast_jpeg and jpeg.eligible(im, channels=channels, size=size):
                    fast = jpeg.decode(data, channels=channels)
                    if fast is not None:
                        return fast
                im.load()
                out = _to_l_or_rgb(im)
                out = out.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    out = out.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.array(out, dtype=np.uint8, copy=True)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: exceeds the pixel limit (decompression bomb?): {one_line(e)}") from e
    except Exception as e:  # PIL raises many types on bad bytes; all mean "cannot decode"
        raise InputError(f"{name}: cannot decode image ({type(e).__name__}: {one_line(e)})") from e
    tensor = torch.from_numpy(arr)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()

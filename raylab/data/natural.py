"""Natural images (ImageNet, Flickr photos) as UAP input.

A natural-image folder is a stream: a corrupt, truncated or otherwise
undecodable file is skipped, counted and reported in a :class:`SkipReport`,
never fatal. Images are resized with a plain bilinear resize to
``size`` x ``size`` (no crop, so the aspect ratio is not kept), which is how
the authors fed photos to their UAP code.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, one_line
from . import jpeg
from .memory import ImageStack

#: File suffixes read as images (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


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
    data: bytes, *, channels: int, size: int | None, max_pixels: int = 89_478_485, name: str = "image",
    fast_jpeg: bool = True,
) -> torch.Tensor:
    """Decode image bytes to a uint8 C x H x W tensor (C = ``channels``, 1 gray or 3 RGB).

    The whole image is decoded (truncated files fail). More than ``max_pixels``
    pixels is refused before decoding. With ``size``, the image is resized to
    ``size`` x ``size`` with PIL bilinear (plain resize, no crop). Any failure
    is an :class:`InputError` naming ``name``. A JPEG already at ``size`` is
    decoded by libjpeg-turbo through torchvision (:mod:`raylab.data.jpeg`: the
    same pixels, faster, and free of Python's lock); ``fast_jpeg=False`` keeps PIL.
    """
    if channels not in (1, 3):
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


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden names skipped), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of images ({'not a directory' if root.exists() else 'no such folder'})")
    files = [
        p for p in root.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        tars = sum(1 for _ in root.glob("*.tar"))
        if tars:
            raise InputError(f"{root}: no image files, but {tars} .tar file(s); shards are read through the "
                             "manifest.json that raylab shard writes beside them, and this folder has none")
        raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _key(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def iter_image_folder(
    root: str | Path,
    *,
    channels: int,
    size: int | None,
    files: Sequence[Path] | None = None,
    skipped: SkipReport | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Lazily yield (name relative to ``root``, uint8 C x H x W image); undecodable files go to ``skipped``."""
    root = Path(root)
    if channels not in (1, 3):
        raise InputError(f"{root}: channels must be 1 (gray) or 3 (RGB), got {channels}")
    paths = list_images(root) if files is None else list(files)
    report = SkipReport() if skipped is None else skipped
    return _iterate(root, paths, channels, size, report)


def _iterate(
    root: Path, paths: list[Path], channels: int, size: int | None, report: SkipReport
) -> Iterator[tuple[str, torch.Tensor]]:
    for path in paths:
        key = _key(root, path)
        try:
            image = decode_image(Path(path).read_bytes(), channels=channels, size=size, name=key)
        except InputError as e:
            report.add(key, str(e).removeprefix(f"{key}: "))
            continue
        except OSError as e:
            report.add(key, f"cannot read file ({one_line(e)})")
            continue
        yield key, image


def load_image_folder(
    root: str | Path, *, channels: int, size: int | None, limit: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, list[str], SkipReport]:
    """Decode a folder of images to uint8 N x C x H x W, their names, and what was skipped.

    With ``limit`` below the number of files, a seeded random sample of
    ``limit`` files is taken (kept in sorted order); corrupt files are skipped,
    so fewer than ``limit`` images may come back. Without ``size`` all images
    must share one size.
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise InputError(f"{root}: limit must be >= 1, got {limit}")
    files = list_images(root)
    if limit is not None and limit < len(files):
        files = [files[i] for i in sorted(random.Random(seed).sample(range(len(files)), limit))]
    report = SkipReport()
    keys: list[str] = []
    images = ImageStack(len(files))
    for key, image in iter_image_folder(root, channels=channels, size=size, files=files, skipped=report):
        images.add(image, str(root / key))
        keys.append(key)
    if not images.count:
        name, reason = report.skipped[0]
        raise InputError(f"{root}: none of the {len(files)} image file(s) could be decoded (first: {name}: {reason})")
    return images.tensor(), keys, report

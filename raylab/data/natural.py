"""Folders of natural images (ImageNet, Flickr photos) as UAP input: the files listed, streamed, or decoded into
memory.

A natural-image folder is a stream: a corrupt, truncated or otherwise undecodable file is skipped, counted and
reported in a :class:`~raylab.data.image.SkipReport`, never fatal; each file is decoded by
:func:`raylab.data.image.decode_image`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..errors import InputError, one_line
from .image import SkipReport, decode_image
from .memory import ImageStack

#: File suffixes read as images (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


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
                             "manifest.json that raylab shard writes beside them, and this folder has none (shards "
                             f"written elsewhere: `raylab index-shards {root}` writes it)")
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

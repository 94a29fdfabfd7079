"""Writing shards: image sources to ``shard-NNNNNN.tar`` files and a manifest, every file through :class:`Store`."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ...core.pixels import MAX_IMAGE_SIZE
from ...errors import InputError, one_line
from ...store import Store, filesystem
from ..medical import load_medmnist
from ..image import decode_image
from ..natural import IMAGE_SUFFIXES, list_images
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, _clean_location

_SPLITS = ("train", "val", "test")
_GRAY_MODES = frozenset({"1", "L", "I", "F"})


@dataclass(frozen=True)
class _Item:
    name: str
    load: Callable[[], tuple[bytes, str]]  # -> (bytes, ext)
    label: int | None = None


def _ext_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return "jpg" if suffix == "jpeg" else suffix


def _file_items(root: Path, paths: Sequence[Path]) -> list[_Item]:
    out = []
    for p in paths:
        name = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        out.append(_Item(name, (lambda p=p: (p.read_bytes(), _ext_of(p)))))
    return out


def _list_items(files: Sequence[str | os.PathLike[str]], *, listing: Path | None = None,
                lines: Sequence[int] = ()) -> tuple[list[_Item], str]:
    """The listed files as items; the missing ones counted and the first named (by ``listing``'s line, when the list
    came from a file): a list of thousands may lose many files at once."""
    if not files:
        raise InputError("shard source: the list of image files is empty")
    paths = [Path(os.path.abspath(os.fspath(f))) for f in files]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i, more = missing[0], len(missing) - 1
        where = f"{listing}: line {lines[i]}: " if listing is not None else ""
        raise InputError(f"{where}{paths[i]} is not a file" + (" (listed as a shard source)" if listing is None else "")
                         + (f" (and {more} more of its {len(paths)} listed files)" if more else ""))
    if len(set(paths)) != len(paths):
        raise InputError("shard source: the list of image files has duplicates")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    items = sorted(_file_items(root, paths), key=lambda it: it.name)
    return items, str(root)


def _png_bytes(arr: np.ndarray, fmt: str = "png") -> bytes:
    """uint8 H x W (gray) or H x W x 3 (RGB) to PNG (lossless) or JPEG (quality 95) bytes."""
    buf = io.BytesIO()
    im = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    im.save(buf, format="PNG") if fmt == "png" else im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tensor_png(image: torch.Tensor, fmt: str = "png") -> bytes:
    arr = image.numpy()
    return _png_bytes(arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)), fmt)


def _npz_items(path: Path, split: str) -> list[_Item]:
    if split not in _SPLITS:
        raise InputError(f"{path}: split must be one of {', '.join(_SPLITS)}, got {split!r}")
    data = load_medmnist(path)
    images = getattr(data, f"{split}_images")
    labels = getattr(data, f"{split}_labels")
    if not len(images):
        raise InputError(f"{path}: the {split} split is empty")
    return [
        _Item(f"{split}/{i}", (lambda i=i: (_tensor_png(images[i]), "png")), int(labels[i]))
        for i in range(len(images))
    ]


def _url_items(url: str) -> list[_Item]:
    """Image files under a folder URL (s3://, gs://, memory://), read through fsspec."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise InputError(f"{url}: shard source URL is not a folder")
    files = sorted(f for f in fs.find(root) if f.lower().endswith(IMAGE_SUFFIXES)
                   and not any(part.startswith(".") for part in f[len(root):].split("/")))
    if not files:
        raise InputError(f"{url}: no image files in this folder")
    return [_Item(f[len(root):].lstrip("/"), (lambda f=f: (fs.cat_file(f), _ext_of(Path(f))))) for f in files]


def _source_items(source: Any, split: str) -> tuple[list[_Item], str, str | None]:
    """(items sorted, source description, split or None)."""
    if isinstance(source, (list, tuple)):
        items, root = _list_items(source)
        return items, root, None
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"shard source must be a folder, a list of image files or a .npz, got {type(source).__name__}")
    if "://" in str(source):
        return _url_items(str(source)), str(source), None
    path = Path(source)
    if path.suffix.lower() == ".npz":
        return _npz_items(path, split), str(path), split
    if path.suffix.lower() == ".txt" and path.is_file():  # a list of image files, one path per line
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
        listed = [(n, path.parent / f) for n, f in lines if f and not f.startswith("#")]
        items, root = _list_items([f for _, f in listed], listing=path, lines=[n for n, _ in listed])
        return items, root, None
    if not path.is_dir():
        raise InputError(f"{path}: shard source must be a folder of images, a list of image files or a MedMNIST .npz")
    return _file_items(path, list_images(path)), str(path), None


def _channels_of(data: bytes, name: str) -> int:
    """1 for a gray image without transparency, else 3 (used when only a size is given)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            gray = (im.mode in _GRAY_MODES or im.mode.startswith("I;16")) and "transparency" not in im.info
    except Exception as e:
        raise InputError(f"{name}: cannot decode image ({one_line(e, with_type=True)})") from e
    return 1 if gray else 3


class _HashingWriter:
    """Forwards writes to ``f`` while counting bytes and hashing them."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.bytes += len(b)
        self.f.write(b)
        return len(b)

    def flush(self) -> None:
        self.f.flush()


def _write_shard(store: Store, name: str, records: Iterable[dict[str, Any]]) -> ShardInfo:
    """Stream ``records`` as the tar ``name`` through ``store.open_atomic``, hashing the bytes on the way.

    The tar is byte-reproducible (``mtime=0``); on an error the temporary file is removed and no shard is left.
    """
    with store.open_atomic(name) as f:
        hasher = _HashingWriter(f)
        writer = wds.TarWriter(hasher, encoder=False, mtime=0)
        count = 0
        for record in records:
            writer.write(record)
            count += 1
        writer.close()
    return ShardInfo(name, count, hasher.bytes, hasher.sha.hexdigest())


def _records(
    items: Iterable[_Item],
    skipped: list[tuple[str, str]],
    *,
    first_key: int,
    convert: bool,
    channels: int | None,
    size: int | None,
    image_format: str,
) -> Iterator[dict[str, Any]]:
    """The tar records of ``items`` in order, keyed ``f"{first_key + j:08d}"`` over the written ones; skips go to
    ``skipped``."""
    written = 0
    for item in items:
        try:
            data, ext = item.load()
        except OSError as e:
            skipped.append((item.name, f"cannot read file ({one_line(e, with_type=True)})"))
            continue
        if convert:
            try:
                ch = channels if channels is not None else _channels_of(data, item.name)
                image = decode_image(data, channels=ch, size=size, name=item.name)
            except InputError as e:
                skipped.append((item.name, str(e).removeprefix(f"{item.name}: ")))
                continue
            data, ext = _tensor_png(image, image_format), image_format
        record: dict[str, Any] = {"__key__": f"{first_key + written:08d}", ext: data, "name.txt": item.name.encode("utf-8")}
        if item.label is not None:
            record["cls"] = str(item.label).encode("ascii")
        written += 1
        yield record


@dataclass(frozen=True)
class ShardJob:
    """Shard ``index`` of a listing: its slice of the items, converted (or not) and written as one tar.

    A shard's content depends on its slice only (items ``index * shard_size`` up to the next shard's first, minus
    those that cannot be read), so shards are written independently: one after another in one process, or as
    parallel tasks over a Ray cluster (:func:`raylab.engine.sharding.ray_map`), with the same bytes.
    """

    location: str
    index: int
    items: tuple[_Item, ...]
    first_key: int
    prefix: str
    convert: bool
    channels: int | None
    size: int | None
    image_format: str

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.index:06d}.tar"


def write_shard(job: ShardJob) -> tuple[ShardInfo | None, list[tuple[str, str]]]:
    """Write one shard; (its info, or None when none of its items could be written; the items skipped)."""
    skipped: list[tuple[str, str]] = []
    records = _records(job.items, skipped, first_key=job.first_key, convert=job.convert, channels=job.channels,
                       size=job.size, image_format=job.image_format)
    head = next(records, None)  # a shard is begun only once it has a record
    if head is None:
        return None, skipped
    return _write_shard(Store.at(job.location), job.name, itertools.chain([head], records)), skipped


#: How shard jobs are run: ``map(write_shard, jobs)`` in this process, or a parallel map that yields in job order.
Mapper = Callable[[Callable[[ShardJob], Any], Sequence[ShardJob]], Iterable[Any]]


def write_shards(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    shard_size: int = 1000,
    sample: int | None = None,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
    split: str = "train",
    progress: bool = False,
    prefix: str = "shard",
    image_format: str = "png",
    mapper: Mapper | None = None,
) -> Manifest:
    """Write ``source`` as webdataset shards of ``shard_size`` samples to ``out``, manifest last.

    ``source`` is an image folder, a list of image files (names relative to
    their common folder) or a MedMNIST ``.npz`` (the ``split`` images with
    their labels). ``sample=K`` writes a seeded random sample of K items, kept
    in sorted order. Without ``size`` and ``channels`` image files are stored
    byte for byte under their own extension (``.jpeg`` as ``jpg``); with
    either, images are decoded, converted and resized with
    :func:`decode_image` and stored as PNG (``image_format="jpg"``: JPEG at
    quality 95, which decodes about 3x faster at 299 px but is lossy), and
    undecodable files are skipped and listed in the manifest. ``.npz`` images
    are always PNG.

    Shard ``i`` holds items ``i * shard_size`` to ``(i + 1) * shard_size - 1``
    of the (sampled) listing, keyed by position, minus the skipped ones (a shard
    with a skipped image is one shorter; one with none written is left out).
    ``mapper`` runs the shards' jobs (:class:`ShardJob`): the builtin ``map``
    by default, or :func:`raylab.engine.sharding.ray_map` over a Ray cluster
    (same shards, same manifest).
    """
    if image_format not in ("png", "jpg"):
        raise InputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size!r}")
    if size is not None and (not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE):
        raise InputError(f"size must be 1 to {MAX_IMAGE_SIZE} px, got {size!r}")
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    if sample is not None and (not isinstance(sample, int) or sample < 1):
        raise InputError(f"sample must be >= 1, got {sample!r}")
    if not prefix or "/" in prefix:
        raise InputError(f"shard prefix must be a non-empty file name part, got {prefix!r}")
    items, source_text, used_split = _source_items(source, split)
    if sample is not None:
        if sample > len(items):
            raise InputError(f"{source_text}: cannot sample {sample} of {len(items)} items")
        items = [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), sample))]
    convert = size is not None or channels is not None

    location = os.fspath(out)
    store = Store.at(location)
    store.makedirs()
    store.remove(MANIFEST_NAME)  # an old manifest never stands beside half-rewritten shards

    jobs = [ShardJob(location, i, tuple(items[start:start + shard_size]), start, prefix, convert, channels, size,
                     image_format) for i, start in enumerate(range(0, len(items), shard_size))]
    done: Iterable[tuple[ShardInfo | None, list[tuple[str, str]]]] = (mapper or map)(write_shard, jobs)
    if progress:
        from ...progress import bar as progress_bar

        done = progress_bar(done, total=len(jobs), desc=f"shards -> {location}", unit="shard")
    shards: list[ShardInfo] = []
    skipped: list[tuple[str, str]] = []
    for info, skips in done:
        skipped += skips
        if info is not None:
            shards.append(info)
    written = sum(s.count for s in shards)
    if not shards:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise InputError(f"{source_text}: none of the {len(items)} item(s) could be written{first}")

    manifest = Manifest(
        location=_clean_location(location),
        shards=tuple(shards),
        total=written,
        image_size=size,
        channels=channels,
        source=source_text,
        seed=seed,
        sample=sample,
        skipped=tuple(skipped),
        split=used_split,
    )
    store.write_bytes(MANIFEST_NAME, manifest.to_json())
    return manifest

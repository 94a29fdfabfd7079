"""Natural images as webdataset tar shards, written once and streamed to Ray workers.

Writing (:func:`write_shards`) turns an image folder, a list of image files or
a MedMNIST ``.npz`` split into ``shard-000000.tar``, ``shard-000001.tar``, ...
plus a ``manifest.json`` (written last) that lists every shard with its sample
count, byte size and sha256. The output may be a local directory or any
fsspec URL (``memory://``, ``file://``, ``s3://``, ...).

Each sample holds ``<key>.jpg`` or ``<key>.png`` (the image), ``<key>.name.txt``
(the original file name) and, for ``.npz`` sources, ``<key>.cls`` (the label).
Keys are ``f"{i:08d}"``, global over the written items.

Reading is a stream that never raises for bad shard content:
:func:`iter_samples` yields raw samples and records missing, truncated or
corrupt shards in a :class:`ShardReport`; :func:`decode_stream` decodes them
(undecodable images are skipped and recorded as ``"<shard>:<key>"``);
:func:`batches` stacks them. Every sample and batch carries the
:class:`Cursor` after it, so a reader can resume exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from ..errors import InputError
from .medical import load_medmnist
from .natural import IMAGE_SUFFIXES, SkipReport, decode_image, list_images

FORMAT = "raylab.shards/1"
MANIFEST_NAME = "manifest.json"
#: Sample members read as the image, in order of preference (lower case, as webdataset groups them).
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 89_478_485
_SPLITS = ("train", "val", "test")
_CHUNK = 1 << 20
_GRAY_MODES = frozenset({"1", "L", "I", "F"})


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A written shard set: where it lives, its shards, and how it was made."""

    location: str
    shards: tuple[ShardInfo, ...]
    total: int
    image_size: int | None
    channels: int | None
    source: str
    seed: Any
    sample: int | None
    skipped: tuple[tuple[str, str], ...]
    split: str | None = None

    def url(self, i: int) -> str:
        """The URL (or local path) of shard ``i``."""
        return _join(self.location, self.shards[i].name)

    @property
    def urls(self) -> list[str]:
        """URLs of all shards, in order."""
        return [self.url(i) for i in range(len(self.shards))]


def _join(location: str, name: str) -> str:
    return location + name if location.endswith("/") else f"{location}/{name}"


def _one_line(e: BaseException | str, limit: int = 200) -> str:
    if isinstance(e, str):
        text = e
    else:
        first = e.args[0] if e.args else None
        text = first if isinstance(first, str) else str(e)
        text = text.split(" @ ")[0]  # webdataset appends " @ <stream>" to the message
    text = " ".join(text.split())
    if not isinstance(e, str):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean_location(loc: str) -> str:
    """Without trailing slashes (kept after a bare ``scheme://``)."""
    if loc.endswith("://"):
        return loc
    stripped = loc.rstrip("/")
    return stripped + "/" if stripped.endswith(":/") else stripped or loc


def _manifest_dir(location: str | os.PathLike[str]) -> str:
    """The shard directory of ``location`` (a directory, or its manifest.json)."""
    loc = _clean_location(os.fspath(location))
    if loc == MANIFEST_NAME:
        return "."
    if loc.endswith("/" + MANIFEST_NAME):
        return _clean_location(loc[: -len(MANIFEST_NAME)]) or "/"
    return loc


def read_manifest(location: str | os.PathLike[str]) -> Manifest:
    """Read ``manifest.json`` in ``location`` (a local directory or fsspec URL, or the manifest itself).

    Raises :class:`InputError` (one line, naming the location) when it is
    missing, not JSON, of another format, or its counts do not sum to its total.
    """
    loc = _manifest_dir(location)
    where = _join(loc, MANIFEST_NAME)
    try:
        with fsspec.open(where, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{where}: no shard manifest here (write shards first)") from None
    except Exception as e:
        raise InputError(f"{where}: cannot read shard manifest ({_one_line(e)})") from e
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: not a JSON shard manifest ({_one_line(e)})") from e
    if not isinstance(doc, dict):
        raise InputError(f"{where}: not a shard manifest (top level is {type(doc).__name__}, not an object)")
    if doc.get("format") != FORMAT:
        raise InputError(f"{where}: format is {doc.get('format')!r}, expected {FORMAT!r}")
    shards_doc = doc.get("shards")
    if not isinstance(shards_doc, list):
        raise InputError(f"{where}: 'shards' must be a list")
    shards = []
    for n, s in enumerate(shards_doc):
        ok = (
            isinstance(s, dict)
            and isinstance(s.get("name"), str) and s["name"] and "/" not in s["name"] and s["name"] not in (".", "..")
            and _is_count(s.get("count")) and _is_count(s.get("bytes"))
            and isinstance(s.get("sha256"), str)
        )
        if not ok:
            raise InputError(f"{where}: shard entry {n} must have name (a file name), count, bytes and sha256")
        shards.append(ShardInfo(s["name"], s["count"], s["bytes"], s["sha256"]))
    if len({s.name for s in shards}) != len(shards):
        raise InputError(f"{where}: shard names repeat")
    total = doc.get("total")
    if not _is_count(total):
        raise InputError(f"{where}: 'total' must be a non-negative integer, got {total!r}")
    counted = sum(s.count for s in shards)
    if counted != total:
        raise InputError(f"{where}: shard counts sum to {counted} but total is {total}")
    for key in ("image_size", "channels", "sample"):
        if doc.get(key) is not None and not _is_count(doc.get(key)):
            raise InputError(f"{where}: {key!r} must be a non-negative integer or null, got {doc.get(key)!r}")
    skipped_doc = doc.get("skipped", [])
    if not isinstance(skipped_doc, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in skipped_doc
    ):
        raise InputError(f"{where}: 'skipped' must be a list of [name, reason] pairs")
    split = doc.get("split")
    return Manifest(
        location=loc,
        shards=tuple(shards),
        total=total,
        image_size=doc.get("image_size"),
        channels=doc.get("channels"),
        source=str(doc.get("source", "")),
        seed=doc.get("seed"),
        sample=doc.get("sample"),
        skipped=tuple((a, b) for a, b in skipped_doc),
        split=split if isinstance(split, str) else None,
    )


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def verify_manifest(manifest: Manifest) -> list[str]:
    """One-line problems with the shards on storage: missing, wrong size, or wrong sha256. Empty if all agree."""
    problems = []
    for i, info in enumerate(manifest.shards):
        url = manifest.url(i)
        try:
            fs, path = fsspec.core.url_to_fs(url)
            size = fs.size(path)
        except FileNotFoundError:
            problems.append(f"{info.name}: missing ({url})")
            continue
        except Exception as e:
            problems.append(f"{info.name}: cannot read ({_one_line(e)})")
            continue
        if size != info.bytes:
            problems.append(f"{info.name}: {size} bytes but the manifest says {info.bytes}")
            continue
        digest = hashlib.sha256()
        try:
            with fs.open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except Exception as e:
            problems.append(f"{info.name}: cannot read ({_one_line(e)})")
            continue
        if digest.hexdigest() != info.sha256:
            problems.append(f"{info.name}: sha256 {digest.hexdigest()} differs from the manifest's {info.sha256}")
    return problems


# --------------------------------------------------------------------------- writing


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


def _list_items(files: Sequence[str | os.PathLike[str]]) -> tuple[list[_Item], str]:
    if not files:
        raise InputError("shard source: the list of image files is empty")
    paths = [Path(os.path.abspath(os.fspath(f))) for f in files]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: not a file (listed as a shard source)")
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
    fs, root = fsspec.core.url_to_fs(url)
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
        lines = [line.strip() for line in path.read_text().splitlines()]
        files = [(path.parent / f) for f in lines if f and not f.startswith("#")]
        items, root = _list_items(files)
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
        raise InputError(f"{name}: cannot decode image ({_one_line(e)})") from e
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


class _ShardOut:
    """One shard being written to a temporary name on ``fs``."""

    def __init__(self, fs: Any, root: str, name: str) -> None:
        self.fs, self.name = fs, name
        self.final = f"{root}/{name}"
        self.tmp = f"{root}/.{name}.{uuid.uuid4().hex}.tmp"
        self.file = fs.open(self.tmp, "wb")
        self.hasher = _HashingWriter(self.file)
        self.writer = wds.TarWriter(self.hasher, encoder=False, mtime=0)
        self.count = 0

    def write(self, sample: dict[str, Any]) -> None:
        self.writer.write(sample)
        self.count += 1

    def finish(self) -> ShardInfo:
        self.writer.close()
        self.file.close()
        self.fs.mv(self.tmp, self.final)
        return ShardInfo(self.name, self.count, self.hasher.bytes, self.hasher.sha.hexdigest())

    def abort(self) -> None:
        try:
            self.file.close()
            self.fs.rm(self.tmp)
        except Exception:
            pass


def _atomic_write(fs: Any, root: str, name: str, data: bytes) -> None:
    tmp = f"{root}/.{name}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, f"{root}/{name}")


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
    """
    if image_format not in ("png", "jpg"):
        raise InputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size!r}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise InputError(f"size must be >= 1, got {size!r}")
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
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/") or root
    fs.makedirs(root, exist_ok=True)
    manifest_path = f"{root}/{MANIFEST_NAME}"
    if fs.exists(manifest_path):  # never leave an old manifest beside half-rewritten shards
        fs.rm(manifest_path)

    shards: list[ShardInfo] = []
    skipped: list[tuple[str, str]] = []
    current: _ShardOut | None = None
    written = 0
    iterable: Iterable[_Item] = items
    if progress:
        from tqdm import tqdm

        iterable = tqdm(items, desc=f"shards -> {location}", unit="img")
    try:
        for item in iterable:
            try:
                data, ext = item.load()
            except OSError as e:
                skipped.append((item.name, f"cannot read file ({_one_line(e)})"))
                continue
            if convert:
                try:
                    ch = channels if channels is not None else _channels_of(data, item.name)
                    image = decode_image(data, channels=ch, size=size, name=item.name)
                except InputError as e:
                    skipped.append((item.name, str(e).removeprefix(f"{item.name}: ")))
                    continue
                data, ext = _tensor_png(image, image_format), image_format
            record: dict[str, Any] = {"__key__": f"{written:08d}", ext: data, "name.txt": item.name.encode("utf-8")}
            if item.label is not None:
                record["cls"] = str(item.label).encode("ascii")
            if current is None:
                current = _ShardOut(fs, root, f"{prefix}-{len(shards):06d}.tar")
            current.write(record)
            written += 1
            if current.count == shard_size:
                shards.append(current.finish())
                current = None
        if current is not None:
            shards.append(current.finish())
            current = None
    except BaseException:
        if current is not None:
            current.abort()
        raise
    if not shards:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise InputError(f"{source_text}: none of the {len(items)} item(s) could be written{first}")

    doc = {
        "format": FORMAT,
        "source": source_text,
        "split": used_split,
        "seed": seed,
        "sample": sample,
        "image_size": size,
        "channels": channels,
        "total": written,
        "shards": [{"name": s.name, "count": s.count, "bytes": s.bytes, "sha256": s.sha256} for s in shards],
        "skipped": [list(p) for p in skipped],
    }
    _atomic_write(fs, root, MANIFEST_NAME, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return Manifest(
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


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in a shard list: shard index, and raw samples already consumed in that shard."""

    shard: int
    offset: int


@dataclass(frozen=True)
class RawSample:
    """One tar sample, undecoded. ``data`` is None when the sample has no image member."""

    key: str
    name: str
    data: bytes | None
    ext: str | None
    label: int | None
    shard: str
    cursor_after: Cursor


@dataclass
class ShardReport:
    """What a shard stream could not deliver: whole shards (missing/corrupt) and single images."""

    shards_failed: list[tuple[str, str]] = field(default_factory=list)
    images: SkipReport = field(default_factory=SkipReport)


@dataclass(frozen=True)
class Batch:
    """Decoded images (uint8 B x C x H x W), their keys and names, labels (or None), and the cursor after them."""

    images: torch.Tensor
    keys: list[str]
    labels: torch.Tensor | None
    cursor_after: Cursor
    names: list[str] = field(default_factory=list)


def _shard_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def _to_raw(sample: dict[str, Any], shard: str, cursor_after: Cursor) -> RawSample:
    key = str(sample.get("__key__", ""))
    ext = next((e for e in IMAGE_EXTS if isinstance(sample.get(e), (bytes, bytearray))), None)
    data = bytes(sample[ext]) if ext is not None else None
    name_raw = sample.get("name.txt")
    name = name_raw.decode("utf-8", errors="replace").strip() if isinstance(name_raw, (bytes, bytearray)) else ""
    label = None
    cls = sample.get("cls")
    if isinstance(cls, (bytes, bytearray)):
        try:
            label = int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            label = None
    return RawSample(key, name or key, data, ext, label, shard, cursor_after)


def _members(sample: dict[str, Any]) -> frozenset[str]:
    return frozenset(k for k in sample if not k.startswith("__"))


def _complete(held: dict[str, Any], previous: frozenset[str] | None, last_started: str | None) -> bool:
    """Whether ``held``, the last sample of a shard that ended early, was read whole."""
    key, ext = base_plus_ext(last_started) if last_started else (None, None)
    if key is not None and key != held["__key__"]:
        return True  # a later sample had begun
    if key is not None and ext is not None and ext.lower() not in held:
        return False  # the damage hit one of this sample's own members
    members = _members(held)
    if previous is not None:
        return members == previous
    return "name.txt" in members and any(e in members for e in IMAGE_EXTS)  # write_shards' layout


def _read_shard(
    url: str, index: int, skip: int, expected: int | None, report: ShardReport
) -> Iterator[RawSample]:
    """Samples of one shard after the first ``skip``; problems go to ``report``, never raised.

    When the shard ends early (a tar error, or fewer samples than the
    manifest's count), its last sample is kept only if it was read whole:
    a later sample had begun, or it has the same members as the sample
    before it (write_shards' members for a shard's first sample).
    """
    name = _shard_name(url)
    try:
        stream = fsspec.open(url, "rb").open()
    except FileNotFoundError:
        report.shards_failed.append((name, f"missing ({url})"))
        return
    except Exception as e:
        report.shards_failed.append((name, f"cannot open ({_one_line(e)})"))
        return
    errors: list[BaseException] = []
    last_started: list[str] = []

    def stop(exn: BaseException) -> bool:
        errors.append(exn)
        return False  # stop this shard at its first error

    def started(fname: str) -> str:  # called by webdataset before a member's data is read
        last_started[:] = [fname]
        return fname

    done = 0

    def emit(s: dict[str, Any]) -> RawSample | None:
        nonlocal done
        done += 1
        return _to_raw(s, name, Cursor(index, done)) if done > skip else None

    held: dict[str, Any] | None = None
    previous: frozenset[str] | None = None
    try:
        files = tar_file_expander(
            [{"url": url, "stream": stream}], handler=stop, rename_files=started, eof_value=None
        )
        for s in group_by_keys(files, handler=stop):
            if held is not None:
                raw = emit(held)
                previous = _members(held)
                if raw is not None:
                    yield raw
            held = s
    except Exception as e:  # webdataset's handlers catch everything; this is a last guard
        errors.append(e)
    finally:
        try:
            stream.close()
        except Exception:
            pass
    if held is not None:
        short = expected is not None and done + 1 < expected
        if (not errors and not short) or _complete(held, previous, last_started[0] if last_started else None):
            raw = emit(held)
            if raw is not None:
                yield raw
    if errors:
        report.shards_failed.append((name, f"truncated or corrupt tar after {done} sample(s) ({_one_line(errors[0])})"))
    elif expected is not None and done != expected:
        what = "ends early" if done < expected else "has more samples than listed"
        report.shards_failed.append((name, f"{what}: {done} sample(s), the manifest says {expected}"))


def iter_samples(
    manifest_or_urls: Manifest | Sequence[str] | str,
    *,
    start: Cursor = Cursor(0, 0),
    report: ShardReport | None = None,
    counts: Sequence[int | None] | None = None,
) -> Iterator[RawSample]:
    """Raw samples of the shards from ``start`` on; never raises for bad shard content.

    ``manifest_or_urls`` is a :class:`Manifest`, a list of shard URLs (with
    ``counts``, the manifest's sample count of each, when known: a shard cut
    at a tar block boundary reads as a clean, shorter tar and only its count
    gives it away), a single ``.tar`` URL, or a manifest location. The first ``start.offset``
    samples of shard ``start.shard`` are skipped without decoding. A missing,
    truncated or corrupt shard is recorded in ``report.shards_failed`` (the
    samples before the damage are still yielded) and the next shard follows.
    """
    if isinstance(manifest_or_urls, (str, os.PathLike)):
        text = os.fspath(manifest_or_urls)
        manifest_or_urls = [text] if text.endswith(".tar") else read_manifest(text)
    if isinstance(manifest_or_urls, Manifest):
        urls = manifest_or_urls.urls
        counts: list[int | None] = [s.count for s in manifest_or_urls.shards]
    else:
        urls = [os.fspath(u) for u in manifest_or_urls]
        counts = [None] * len(urls) if counts is None else list(counts)
        if len(counts) != len(urls):
            raise InputError(f"counts: {len(counts)} value(s) for {len(urls)} shard URL(s)")
    if not isinstance(start, Cursor) or start.shard < 0 or start.offset < 0:
        raise InputError(f"start must be a Cursor with non-negative shard and offset, got {start!r}")
    report = ShardReport() if report is None else report
    return _iterate(urls, counts, start, report)


def _iterate(urls: list[str], counts: list[int | None], start: Cursor, report: ShardReport) -> Iterator[RawSample]:
    for i in range(start.shard, len(urls)):
        skip = start.offset if i == start.shard else 0
        expected = counts[i]
        if skip and expected is not None and skip >= expected:
            continue  # the cursor is at (or past) the end of this shard
        yield from _read_shard(urls[i], i, skip, expected, report)


def decode_stream(
    samples: Iterable[RawSample],
    *,
    channels: int,
    size: int | None,
    report: ShardReport,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[RawSample, torch.Tensor]]:
    """Decode raw samples with :func:`decode_image`; undecodable or image-less ones go to ``report.images``."""
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    if size is not None and size < 1:
        raise InputError(f"size must be >= 1, got {size!r}")
    return _decode(samples, channels, size, report, max_pixels)


def _decode(
    samples: Iterable[RawSample], channels: int, size: int | None, report: ShardReport, max_pixels: int
) -> Iterator[tuple[RawSample, torch.Tensor]]:
    for raw in samples:
        where = f"{raw.shard}:{raw.key}"
        if raw.data is None:
            report.images.add(where, "no image in sample")
            continue
        try:
            image = decode_image(raw.data, channels=channels, size=size, max_pixels=max_pixels, name=where)
        except InputError as e:
            report.images.add(where, str(e).removeprefix(f"{where}: "))
            continue
        yield raw, image


def batches(decoded: Iterable[tuple[RawSample, torch.Tensor]], batch_size: int) -> Iterator[Batch]:
    """Stack decoded images into batches of ``batch_size`` (the last may be shorter).

    A batch's ``cursor_after`` is the cursor after its last sample, so
    :func:`iter_samples` resumed there continues with the next batch. Images
    of different sizes (no ``size`` given) are an :class:`InputError`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    return _batches(decoded, batch_size)


def _batches(decoded: Iterable[tuple[RawSample, torch.Tensor]], batch_size: int) -> Iterator[Batch]:
    group: list[tuple[RawSample, torch.Tensor]] = []
    for pair in decoded:
        if group and pair[1].shape != group[0][1].shape:
            first, raw = group[0][0], pair[0]
            raise InputError(
                f"{raw.shard}:{raw.key}: image size {tuple(pair[1].shape)} differs from {tuple(group[0][1].shape)} "
                f"of {first.shard}:{first.key}; give a size to resize"
            )
        group.append(pair)
        if len(group) == batch_size:
            yield _make_batch(group)
            group = []
    if group:
        yield _make_batch(group)


def _make_batch(group: list[tuple[RawSample, torch.Tensor]]) -> Batch:
    raws = [r for r, _ in group]
    labels = None
    if all(r.label is not None for r in raws):
        labels = torch.tensor([r.label for r in raws], dtype=torch.int64)
    return Batch(
        images=torch.stack([t for _, t in group]),
        keys=[r.key for r in raws],
        labels=labels,
        cursor_after=raws[-1].cursor_after,
        names=[r.name for r in raws],
    )

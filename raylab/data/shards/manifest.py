"""The shard manifest: ``manifest.json``'s format, reading and checking it against the shards on storage."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from ...errors import InputError, one_line

FORMAT = "raylab.shards/1"
MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


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

    def to_json(self) -> bytes:
        """``manifest.json``'s bytes: what :func:`read_manifest` reads back."""
        doc = {"format": FORMAT, "source": self.source, "split": self.split, "seed": self.seed, "sample": self.sample,
               "image_size": self.image_size, "channels": self.channels, "total": self.total,
               "shards": [{"name": s.name, "count": s.count, "bytes": s.bytes, "sha256": s.sha256} for s in self.shards],
               "skipped": [list(p) for p in self.skipped]}
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")

    @property
    def skipped_lines(self) -> tuple[str, ...]:
        """``"name: why"`` of each source file these shards were written without (unreadable when sharded)."""
        return tuple(f"{name}: {why}" for name, why in self.skipped)

    def short_of(self, *, channels: int, size: int) -> str | None:
        """A warning when these shards hold less than a model of ``channels`` x ``size`` px inputs takes: photos
        stored gray for an RGB model, or smaller than its input (upsampled); None when they hold what it takes. A
        UAP made from such images may under-state what the original photos do."""
        lost = (["gray (RGB inputs get no colour)"] if self.channels == 1 and channels == 3 else []) + (
            [f"at {self.image_size} px (upsampled to its {size} px)"]
            if self.image_size is not None and self.image_size < size else [])
        if not lost:
            return None
        again = f"--image-size {size}" + (" --channels 3" if channels == 3 else "")
        return (f"warning: the shards at {self.location} hold the photos {' and '.join(lost)}, less than the model "
                f"takes, so this UAP may under-state what the original photos do; write them again from the photos "
                f"({self.source}) with `raylab shard ... {again}`, or without resizing")


def _join(location: str, name: str) -> str:
    return location + name if location.endswith("/") else f"{location}/{name}"


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


def _no_manifest(loc: str, where: str) -> InputError:
    """What a local location without a manifest is instead: nothing, a file (a shard itself), or a folder of photos
    that was never sharded; else (a URL, or a folder of other files) only that it has no manifest."""
    from ..natural import IMAGE_SUFFIXES

    path = Path(loc)
    if "://" not in loc:
        if not path.exists():
            return InputError(f"{loc}: no such shard location (write shards there with `raylab shard`)")
        if path.is_file():
            parent = f" ({path.parent})" if (path.parent / MANIFEST_NAME).is_file() else ""
            return InputError(f"{loc}: a file, not a shard location; give the folder that holds its manifest.json{parent}")
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir()):
            return InputError(f"{loc}: a folder of images, not a shard location; write shards from it first "
                              f"(`raylab shard {loc} LOCATION`)")
        if any(f.suffix.lower() == ".tar" for f in path.iterdir()):
            return InputError(f"{loc}: .tar files without the manifest.json that raylab reads shards through; shards "
                              f"written elsewhere (img2dataset, webdataset): `raylab index-shards {loc}` writes it")
    return InputError(f"{where}: no shard manifest here (write shards first)")


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
    except (FileNotFoundError, NotADirectoryError):
        raise _no_manifest(loc, where) from None
    except Exception as e:
        raise InputError(f"{where}: cannot read shard manifest ({one_line(e, with_type=True)})") from e
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: not a JSON shard manifest ({one_line(e, with_type=True)})") from e
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
            problems.append(f"{info.name}: cannot read ({one_line(e, with_type=True)})")
            continue
        if size != info.bytes:
            problems.append(f"{info.name}: {size} bytes but the manifest says {info.bytes}")
            continue
        try:
            _, sha256 = file_digest(fs, path)
        except Exception as e:
            problems.append(f"{info.name}: cannot read ({one_line(e, with_type=True)})")
            continue
        if sha256 != info.sha256:
            problems.append(f"{info.name}: sha256 {sha256} differs from the manifest's {info.sha256}")
    return problems


def file_digest(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    """The byte size and sha256 of one file (a shard), read in chunks."""
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()

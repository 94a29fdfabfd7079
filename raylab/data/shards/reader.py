"""Reading shards as a stream of raw (undecoded) samples that never raises for bad shard content, resumable at any
:class:`Cursor`; decoding is :mod:`.decode`, batching :mod:`.batch`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from ...errors import InputError, one_line
from ..image import SkipReport
from .manifest import Manifest, read_manifest

#: Sample members read as the image, in order of preference (lower case, as webdataset groups them).
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 89_478_485


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


def read_shard(
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
        report.shards_failed.append((name, f"cannot open ({one_line(e, with_type=True)})"))
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
        why = one_line(errors[0], with_type=True)
        report.shards_failed.append((name, f"truncated or corrupt tar after {done} sample(s) ({why})"))
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
        yield from read_shard(urls[i], i, skip, expected, report)

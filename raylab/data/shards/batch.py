"""Stacking decoded samples into batches that know where the stream resumes, and a whole shard set in memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ...errors import InputError
from ..jpeg import Encoded, EncodedBatch
from .decode import decode_stream
from .manifest import read_manifest
from .reader import Cursor, RawSample, ShardReport, iter_samples


@dataclass(frozen=True)
class Batch:
    """Decoded images (uint8 B x C x H x W), their keys and names, labels (or None), and the cursor after them.

    From a stream decoded with ``device_jpegs=True``, ``images`` is an :class:`~raylab.data.jpeg.EncodedBatch`
    wherever a JPEG in it is left for the worker's device."""

    images: torch.Tensor | EncodedBatch
    keys: list[str]
    labels: torch.Tensor | None
    cursor_after: Cursor
    names: list[str] = field(default_factory=list)


def batches(decoded: Iterable[tuple[RawSample, torch.Tensor | Encoded]], batch_size: int) -> Iterator[Batch]:
    """Stack decoded images into batches of ``batch_size`` (the last may be shorter).

    A batch's ``cursor_after`` is the cursor after its last sample, so
    :func:`iter_samples` resumed there continues with the next batch. Images
    of different sizes (no ``size`` given) are an :class:`InputError`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    return _batches(decoded, batch_size)


def _batches(decoded: Iterable[tuple[RawSample, torch.Tensor | Encoded]], batch_size: int) -> Iterator[Batch]:
    group: list[tuple[RawSample, torch.Tensor | Encoded]] = []
    for pair in decoded:
        if group and tuple(pair[1].shape) != tuple(group[0][1].shape):
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


def _make_batch(group: list[tuple[RawSample, torch.Tensor | Encoded]]) -> Batch:
    raws = [r for r, _ in group]
    labels = None
    if all(r.label is not None for r in raws):
        labels = torch.tensor([r.label for r in raws], dtype=torch.int64)
    items = [t for _, t in group]
    return Batch(
        images=torch.stack(items) if all(isinstance(t, torch.Tensor) for t in items)
        else EncodedBatch(items, [f"{r.shard}:{r.key}" for r in raws]),
        keys=[r.key for r in raws],
        labels=labels,
        cursor_after=raws[-1].cursor_after,
        names=[r.name for r in raws],
    )


class ShardImages(NamedTuple):
    """A shard location's images in memory, and what of them did not arrive."""

    images: torch.Tensor
    #: ``"<shard>:<key>: reason"`` of each image that could not be decoded.
    skipped: tuple[str, ...]
    #: ``"<shard>: reason"`` of each shard that was missing, truncated or disagreed with its manifest.
    failed: tuple[str, ...]
    #: The images asked for: the manifest's total, or the sample's size; those neither decoded nor skipped were lost
    #: with a failed shard.
    listed: int


def load_shard_images(location: str, *, channels: int, size: int, limit: int | None = None,
                      seed: int = 0) -> ShardImages:
    """The images of a shard location decoded into memory (uint8 N x C x size x size), for a single-machine run.

    With ``limit`` below the manifest's total, a seeded random sample of ``limit`` of the manifest's positions is
    decoded (the others are not): a position is its shard's offset in the manifest plus its place in the shard, so a
    missing or cut shard loses its own sampled images and moves no other. InputError when no image decodes.
    """
    import random
    from itertools import accumulate

    manifest = read_manifest(location)
    keep = None
    if limit is not None and limit < manifest.total:
        keep = set(random.Random(seed).sample(range(manifest.total), limit))
    offsets = list(accumulate((s.count for s in manifest.shards), initial=0))
    report = ShardReport()
    samples = (s for s in iter_samples(manifest, report=report)
               if keep is None or offsets[s.cursor_after.shard] + s.cursor_after.offset - 1 in keep)
    images = [image for _, image in decode_stream(samples, channels=channels, size=size, report=report)]
    skipped = tuple(f"{name}: {why}" for name, why in report.images.skipped)
    failed = tuple(f"{name}: {why}" for name, why in report.shards_failed)
    if not images:
        raise InputError(f"{location}: no image of its {manifest.total} decoded"
                         + (f" (first: {(skipped or failed)[0]})" if skipped or failed else ""))
    return ShardImages(torch.stack(images), skipped, failed, manifest.total if keep is None else len(keep))

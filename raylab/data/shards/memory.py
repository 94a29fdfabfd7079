"""A whole shard location decoded into memory (:func:`load_shard_images`), for a single-machine UAP."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...errors import InputError
from ..memory import ImageStack
from .decode import decode_stream
from .manifest import read_manifest
from .reader import ShardReport, iter_samples


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
    #: What the stored images lack for the model (:meth:`Manifest.short_of`), or None.
    warning: str | None = None
    #: ``"name: why"`` of each source file the shards were written without (:attr:`Manifest.skipped_lines`).
    skipped_when_sharded: tuple[str, ...] = ()


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
    listed = manifest.total if keep is None else len(keep)
    images = ImageStack(listed)
    for _, image in decode_stream(samples, channels=channels, size=size, report=report):
        images.add(image)
    skipped = tuple(f"{name}: {why}" for name, why in report.images.skipped)
    failed = tuple(f"{name}: {why}" for name, why in report.shards_failed)
    if not images.count:
        raise InputError(f"{location}: no image of its {manifest.total} decoded"
                         + (f" (first: {(skipped or failed)[0]})" if skipped or failed else ""))
    return ShardImages(images.tensor(), skipped, failed, listed, manifest.short_of(channels=channels, size=size),
                       manifest.skipped_lines)

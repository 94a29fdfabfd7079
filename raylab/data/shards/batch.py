"""Stacking decoded samples into batches that know where the stream resumes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ...errors import InputError
from ..jpeg import Encoded, EncodedBatch
from .reader import Cursor, RawSample


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

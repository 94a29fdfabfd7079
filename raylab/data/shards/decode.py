"""Decoding a stream of raw samples: undecodable or image-less samples are skipped and reported, never raised."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ...errors import InputError
from ..natural import decode_image
from .reader import DEFAULT_MAX_PIXELS, RawSample, ShardReport


def decode_stream(
    samples: Iterable[RawSample],
    *,
    channels: int,
    size: int | None,
    report: ShardReport,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 1,
) -> Iterator[tuple[RawSample, torch.Tensor]]:
    """Decode raw samples with :func:`decode_image`; undecodable or image-less ones go to ``report.images``.

    ``threads > 1`` decodes that many samples at once (libjpeg-turbo, PIL's decoders and its resize run without
    Python's lock), still yielding, and reporting skips, in stream order; at most ``2 x threads`` samples are in
    flight, so memory stays flat.
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    if size is not None and size < 1:
        raise InputError(f"size must be >= 1, got {size!r}")
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be >= 1, got {threads!r}")
    if threads == 1:
        return _decode(samples, channels, size, report, max_pixels)
    return _decode_threaded(samples, channels, size, report, max_pixels, threads)


def _decode_one(raw: RawSample, channels: int, size: int | None, max_pixels: int) -> torch.Tensor | str:
    """The image of ``raw``, or why it cannot be decoded."""
    where = f"{raw.shard}:{raw.key}"
    if raw.data is None:
        return "no image in sample"
    try:
        return decode_image(raw.data, channels=channels, size=size, max_pixels=max_pixels, name=where)
    except InputError as e:
        return str(e).removeprefix(f"{where}: ")


def _decode(
    samples: Iterable[RawSample], channels: int, size: int | None, report: ShardReport, max_pixels: int
) -> Iterator[tuple[RawSample, torch.Tensor]]:
    for raw in samples:
        image = _decode_one(raw, channels, size, max_pixels)
        if isinstance(image, str):
            report.images.add(f"{raw.shard}:{raw.key}", image)
            continue
        yield raw, image


def _decode_threaded(
    samples: Iterable[RawSample], channels: int, size: int | None, report: ShardReport, max_pixels: int, threads: int
) -> Iterator[tuple[RawSample, torch.Tensor]]:
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    window: deque[tuple[RawSample, Future]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="raylab-decode") as pool:
        try:
            for raw in samples:
                window.append((raw, pool.submit(_decode_one, raw, channels, size, max_pixels)))
                while len(window) > 2 * threads or (window and window[0][1].done()):
                    yield from _ready(window.popleft(), report)
            while window:
                yield from _ready(window.popleft(), report)
        finally:  # a consumer that stops early (a reader seeking) leaves nothing running
            for _, future in window:
                future.cancel()


def _ready(item: tuple[RawSample, Any], report: ShardReport) -> Iterator[tuple[RawSample, torch.Tensor]]:
    raw, future = item
    image = future.result()
    if isinstance(image, str):
        report.images.add(f"{raw.shard}:{raw.key}", image)
    else:
        yield raw, image

"""Decoding a stream of raw samples: undecodable or image-less samples are skipped and reported, never raised."""

from __future__ import annotations

import functools
import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from ...errors import InputError
from .. import jpeg
from ..jpeg import Encoded
from ..image import decode_image
from .reader import DEFAULT_MAX_PIXELS, RawSample, ShardReport


def decode_stream(
    samples: Iterable[RawSample],
    *,
    channels: int,
    size: int | None,
    report: ShardReport,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 1,
    device_jpegs: bool = False,
) -> Iterator[tuple[RawSample, torch.Tensor | Encoded]]:
    """Decode raw samples with :func:`decode_image`; undecodable or image-less ones go to ``report.images``.

    ``threads > 1`` decodes that many samples at once (libjpeg-turbo, PIL's decoders and its resize run without
    Python's lock), still yielding, and reporting skips, in stream order; at most ``2 x threads`` samples are in
    flight, so memory stays flat. ``device_jpegs=True`` leaves the JPEGs that need no resize encoded
    (:class:`~raylab.data.jpeg.Encoded`, checked up to their header), for the worker's device to decode
    (:func:`raylab.data.jpeg.decode_batch`).
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    if size is not None and size < 1:
        raise InputError(f"size must be >= 1, got {size!r}")
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be >= 1, got {threads!r}")
    one = functools.partial(_for_device if device_jpegs else _decode_one, channels=channels, size=size,
                            max_pixels=max_pixels)
    if threads == 1:
        return _decode(samples, one, report)
    return _decode_threaded(samples, one, report, threads)


def _decode_one(raw: RawSample, *, channels: int, size: int | None, max_pixels: int) -> torch.Tensor | str:
    """The image of ``raw``, or why it cannot be decoded."""
    where = f"{raw.shard}:{raw.key}"
    if raw.data is None:
        return "no image in sample"
    try:
        return decode_image(raw.data, channels=channels, size=size, max_pixels=max_pixels, name=where)
    except InputError as e:
        return str(e).removeprefix(f"{where}: ")


def _for_device(raw: RawSample, *, channels: int, size: int | None, max_pixels: int) -> torch.Tensor | Encoded | str:
    """``raw``'s JPEG left encoded when the worker's device can decode it to the reader's pixels, else decoded here."""
    if raw.data is not None:
        try:
            with Image.open(io.BytesIO(raw.data)) as header:
                w, h = header.size
                if w * h <= max_pixels and jpeg.eligible(header, channels=channels, size=size):
                    return jpeg.encoded(raw.data, header, channels=channels)
        except Exception:  # noqa: BLE001 - not an image PIL recognizes: decoding below names why
            pass
    return _decode_one(raw, channels=channels, size=size, max_pixels=max_pixels)


def _decode(samples: Iterable[RawSample], one: Callable[[RawSample], Any], report: ShardReport
            ) -> Iterator[tuple[RawSample, torch.Tensor | Encoded]]:
    for raw in samples:
        image = one(raw)
        if isinstance(image, str):
            report.images.add(f"{raw.shard}:{raw.key}", image)
            continue
        yield raw, image


def _decode_threaded(samples: Iterable[RawSample], one: Callable[[RawSample], Any], report: ShardReport, threads: int
                     ) -> Iterator[tuple[RawSample, torch.Tensor | Encoded]]:
    window: deque[tuple[RawSample, Future]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="raylab-decode") as pool:
        try:
            for raw in samples:
                window.append((raw, pool.submit(one, raw)))
                while len(window) > 2 * threads or (window and window[0][1].done()):
                    yield from _ready(window.popleft(), report)
            while window:
                yield from _ready(window.popleft(), report)
        finally:  # a consumer that stops early (a reader seeking) leaves nothing running
            for _, future in window:
                future.cancel()


def _ready(item: tuple[RawSample, Any], report: ShardReport) -> Iterator[tuple[RawSample, torch.Tensor | Encoded]]:
    raw, future = item
    image = future.result()
    if isinstance(image, str):
        report.images.add(f"{raw.shard}:{raw.key}", image)
    else:
        yield raw, image

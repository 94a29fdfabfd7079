"""Decode throughput of natural images for a model input size: per core, one reader's threads, all cores.

Measures raylab's own decoder (raylab.data.image.decode_image) on original
ImageNet JPEGs and on the same photos stored already resized (as
`raylab shard --image-size` writes them), the two cases issue #4 compares;
for stored-resized JPEGs also PIL alone (``fast_jpeg=False``) beside the
libjpeg-turbo path through torchvision that the reader takes (issue #18), and
one reader's decode threads (``decode_stream(threads=N)``) beside N processes.

    python benchmarks/decode_rate.py --images DIR --size 299 --channels 3 [--processes N] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import time
from pathlib import Path

from PIL import Image

from raylab.bench import cpu_name, write_figures
from raylab.data.image import decode_image
from raylab.data.natural import list_images
from raylab.data.shards import Cursor, RawSample, ShardReport, decode_stream


def _rate(blobs: list[bytes], channels: int, size: int, fast_jpeg: bool = True) -> float:
    t = time.perf_counter()
    for b in blobs:
        decode_image(b, channels=channels, size=size, fast_jpeg=fast_jpeg)
    return len(blobs) / (time.perf_counter() - t)


def _threaded_rate(blobs: list[bytes], channels: int, size: int, threads: int) -> float:
    """Images/s of one reader's decode stage with ``threads`` decode threads (samples already in memory)."""
    raws = [RawSample(f"{i:08d}", "", b, "jpg", None, "mem", Cursor(0, i + 1)) for i, b in enumerate(blobs)]
    report = ShardReport()
    t = time.perf_counter()
    n = sum(1 for _ in decode_stream(raws, channels=channels, size=size, report=report, threads=threads))
    return n / (time.perf_counter() - t)


def _resized(data: bytes, size: int, channels: int, fmt: str) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="also the decode threads of one reader")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    blobs = [p.read_bytes() for p in list_images(a.images)[: a.limit]]
    png = [_resized(b, a.size, a.channels, "PNG") for b in blobs]
    jpg = [_resized(b, a.size, a.channels, "JPEG") for b in blobs]
    _rate(jpg[:4], a.channels, a.size)  # warm-up: torchvision's image extension loads on first use
    fig = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "images": len(blobs),
           "size": a.size, "channels": a.channels}
    for name, data in (("original_jpeg", blobs), ("stored_resized_png", png), ("stored_resized_jpeg_q95", jpg)):
        fig[f"{name}_per_core"] = _rate(data, a.channels, a.size)
        if name == "stored_resized_jpeg_q95":
            fig[f"{name}_per_core_pil_only"] = _rate(data, a.channels, a.size, fast_jpeg=False)
            fig[f"{name}_fast_over_pil_per_core"] = fig[f"{name}_per_core"] / fig[f"{name}_per_core_pil_only"]
        fig[f"{name}_{a.processes}_threads_one_reader"] = _threaded_rate(data, a.channels, a.size, a.processes)
        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock in its thread pool
        with multiprocessing.get_context("spawn").Pool(a.processes) as pool:
            rates = pool.starmap(_rate, [(data, a.channels, a.size)] * a.processes)
            fig[f"{name}_{a.processes}_processes"] = sum(rates)  # each process timed its own decoding
    write_figures(fig, a.out)


if __name__ == "__main__":
    main()

"""Reader actors: webdataset shards -> decoded, fixed-size batches, decoded ahead of the workers.

Each reader owns a list of shards (its share of the stream, repeated for
i_max passes, each pass in its own seeded random order of shards and of each shard's samples unless ``seed`` is None:
:mod:`raylab.data.shards.order`) and a background thread that decodes up to ``prefetch`` batches
ahead (back-pressure: a full queue blocks the thread, so memory stays flat),
with ``threads`` decode threads (one per CPU the reader asks for, by default:
decoding runs free of Python's lock, so one reader feeds a fast GPU). With
``device_jpegs`` (``--decode-on worker``) JPEGs that need no resize travel
encoded and the worker decodes them on its device (nvJPEG on a GPU).
``read(position)`` hands out the batch that starts at ``position``; when that
is not the head of the queue (after a restart, a resume or a redo) the reader
seeks there, so a batch can always be asked for again and is always the same.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import ray
import torch

from ..data.jpeg import EncodedBatch
from ..data.shards import Cursor, RawSample, ShardReport, batches, decode_stream, iter_samples
from ..data.shards.order import shuffled_samples
from ..errors import RaylabError, one_line
from ..telemetry import Telemetry, ray_sink
from .transport import to_wire

#: Seconds ``read`` waits for its decode thread between checks that the thread is still alive.
_POLL = 1.0


@dataclass(frozen=True, order=True)
class Position:
    """Where a reader's stream stands: the pass, and the cursor inside the shard list."""

    pass_: int = 0
    cursor: Cursor = field(default_factory=lambda: Cursor(0, 0))

    def to_list(self) -> list[int]:
        return [self.pass_, self.cursor.shard, self.cursor.offset]

    @staticmethod
    def from_list(v: list[int]) -> "Position":
        return Position(v[0], Cursor(v[1], v[2]))


@dataclass(frozen=True)
class _Failure:
    """What a decode thread that died hands to ``read``: where it was, and why."""

    where: str
    message: str


@dataclass
class BatchMeta:
    """What the driver needs to know about a batch (the images themselves go straight to a worker)."""

    start: Position
    end: Position
    size: int
    keys: list[str]
    skipped: list[tuple[str, str]]
    shards_failed: list[tuple[str, str]]
    decode_seconds: float
    exhausted: bool = False
    nbytes: int = 0


class _Producer(threading.Thread):
    """Decodes batches from ``start`` into a bounded queue until the stream ends or it is told to stop."""

    def __init__(self, urls: list[str], counts: list[int | None], start: Position, passes: int, channels: int, size: int,
                 batch_size: int, prefetch: int, threads: int = 1, device_jpegs: bool = False, seed: int | None = None,
                 stream: int = 0) -> None:
        super().__init__(daemon=True)
        self.urls, self.counts, self.start_at, self.passes, self.threads = urls, counts, start, passes, threads
        self.seed, self.stream = seed, stream
        self.device_jpegs = device_jpegs
        self.channels, self.size, self.batch_size = channels, size, batch_size
        self.out: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.nbytes = 0  # image bytes read so far; each batch's meta carries its share
        self.where = "before its first shard"  # the shard and key last read, for a failure's message

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _counted(self, samples: Iterator[RawSample]) -> Iterator[RawSample]:
        for raw in samples:
            self.nbytes += len(raw.data or b"")
            self.where = f"{raw.shard}:{raw.key}"
            yield raw

    def run(self) -> None:
        """Decode until the end; an unexpected error is handed to ``read`` (bad shards and images never get here)."""
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - whatever kills the thread must reach the driver, not hang it
            self._put((_Failure(self.where, one_line(e, with_type=True)), None))

    def _run(self) -> None:
        pos = self.start_at
        for pass_ in range(pos.pass_, self.passes):
            cursor = pos.cursor if pass_ == pos.pass_ else Cursor(0, 0)
            report = ShardReport()
            seen_images, seen_shards = 0, 0
            samples = (iter_samples(self.urls, start=cursor, report=report, counts=self.counts) if self.seed is None else
                       shuffled_samples(self.urls, self.counts, seed=self.seed, stream=self.stream, pass_=pass_,
                                        start=cursor, report=report))
            stream = batches(decode_stream(self._counted(samples),
                                           channels=self.channels, size=self.size, report=report, threads=self.threads,
                                           device_jpegs=self.device_jpegs),
                             self.batch_size)
            t, counted = time.perf_counter(), self.nbytes
            for batch in stream:
                end = Position(pass_, batch.cursor_after)
                meta = BatchMeta(start=pos, end=end, size=len(batch.keys), keys=list(batch.keys),
                                 skipped=report.images.skipped[seen_images:], shards_failed=report.shards_failed[seen_shards:],
                                 decode_seconds=time.perf_counter() - t, nbytes=self.nbytes - counted)
                counted = self.nbytes
                seen_images, seen_shards = report.images.count, len(report.shards_failed)
                if not self._put((meta, batch.images)):
                    return
                pos, t = end, time.perf_counter()
            # Skips after the last full batch of a pass belong to the pass's end marker.
            pos_next = Position(pass_ + 1, Cursor(0, 0))
            tail = BatchMeta(start=pos, end=pos_next, size=0, keys=[], skipped=report.images.skipped[seen_images:],
                             shards_failed=report.shards_failed[seen_shards:], decode_seconds=time.perf_counter() - t)
            if tail.skipped or tail.shards_failed or pass_ + 1 < self.passes:
                if not self._put((tail, None)):
                    return
            pos = pos_next
        final = BatchMeta(start=pos, end=pos, size=0, keys=[], skipped=[], shards_failed=[], decode_seconds=0.0, exhausted=True)
        self._put((final, None))


#: Restarted by Ray whenever its process or node dies; a read in flight then fails at once (no retries by Ray) and the
#: driver asks the restarted reader again from its position, or says it is waiting for resources to restart it.
@ray.remote(max_restarts=-1, max_task_retries=0)
class ShardReader:
    """A Ray actor that reads and decodes its shards (see the module docstring)."""

    def __init__(self, urls: list[str], *, counts: list[int | None] | None = None, passes: int, channels: int, size: int,
                 batch_size: int, prefetch: int, threads: int = 1, device_jpegs: bool = False, seed: int | None = None,
                 index: int = 0, tags: dict[str, str] | None = None) -> None:
        torch.set_num_threads(1)
        self.index, self.telemetry = index, Telemetry(ray_sink(), **(tags or {}))
        self.args = dict(urls=list(urls), counts=list(counts) if counts is not None else [None] * len(urls), passes=passes,
                         channels=channels, size=size, batch_size=batch_size, prefetch=prefetch, threads=threads,
                         device_jpegs=device_jpegs, seed=seed, stream=index)
        self.producer: _Producer | None = None
        self.head: Position | None = None

    def _seek(self, start: Position) -> None:
        if self.producer is not None:
            self.producer.stop.set()
        self.producer = _Producer(start=start, **self.args)
        self.producer.start()
        self.head = start

    @ray.method(num_returns=2)
    def read(self, start: list[int]) -> tuple[np.ndarray | EncodedBatch | None, BatchMeta]:
        """The next item from ``start``: a batch of images (uint8, as an array: :func:`~raylab.engine.transport.to_wire`;
        or None at a pass end / the stream's end) and its meta."""
        pos = Position.from_list(start)
        if self.head != pos or self.producer is None:
            self._seek(pos)
        assert self.producer is not None
        meta, images = self._next(self.producer)
        self.head = meta.end
        if meta.size:
            self.telemetry.decoded(reader=self.index, seconds=meta.decode_seconds, nbytes=meta.nbytes,
                                   queue_depth=self.producer.out.qsize())
        return to_wire(images), meta  # zero-copy to the worker (:mod:`raylab.engine.transport`)

    def _next(self, producer: _Producer) -> tuple[BatchMeta, torch.Tensor | None]:
        """The producer's next item; a failure or a thread that died raises one line naming the shard."""
        while True:
            try:
                meta, images = producer.out.get(timeout=_POLL)
                break
            except queue.Empty:
                if not producer.is_alive() and producer.out.empty():
                    raise RaylabError(f"reader {self.index}: its decode thread stopped at {producer.where}") from None
        if isinstance(meta, _Failure):
            raise RaylabError(f"reader {self.index}: decoding failed at {meta.where} ({meta.message})")
        return meta, images

    def queue_depth(self) -> int:
        return 0 if self.producer is None else self.producer.out.qsize()

    @ray.method(max_task_retries=-1)
    def pid(self) -> int:
        """This reader's process id; retried by Ray while the actor restarts, so it also waits for a restart."""
        import os

        return os.getpid()

    def node(self) -> str:
        """The id of the Ray node this reader runs on."""
        return ray.get_runtime_context().get_node_id()

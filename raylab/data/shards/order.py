"""The seeded random order a stream of shards is visited in, and a position in it that names the same images again.

The paper's method takes each input image "selected randomly from X without replacement" (Section 2.2), and a
seed of a UAP is that order: without it, every seed of a streamed UAP would visit the same images in the same order
and make the same UAP. A stream does not fit in memory, so the order is drawn in two levels: each pass visits its
shards in a seeded random order (:func:`shard_order`) and each shard's samples in a seeded random order
(:func:`sample_order`; one shard's encoded samples are held at a time). Both depend only on ``(seed, stream,
pass, place)``, so a :class:`~raylab.data.shards.Cursor` in the shuffled stream (the k-th shard of the order, the
first j samples of its order) names the same images after a restart, a seek or a resume.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from .reader import Cursor, RawSample, ShardReport, read_shard


def shard_order(n: int, *, seed: int, stream: int, pass_: int) -> list[int]:
    """The order of ``n`` shards in pass ``pass_`` of stream ``stream`` (a reader's share)."""
    return np.random.default_rng([seed, stream, pass_]).permutation(n).tolist()


def sample_order(n: int, *, seed: int, stream: int, pass_: int, place: int) -> list[int]:
    """The order of the ``n`` samples of the shard at ``place`` in the pass's shard order."""
    return np.random.default_rng([seed, stream, pass_, place + 1]).permutation(n).tolist()


def shuffled_samples(urls: Sequence[str], counts: Sequence[int | None], *, seed: int, stream: int, pass_: int,
                     start: Cursor = Cursor(0, 0), report: ShardReport | None = None) -> Iterator[RawSample]:
    """One pass's raw samples in its seeded order, from ``start`` (a cursor in that order) on; like
    :func:`~raylab.data.shards.iter_samples`, a missing or damaged shard goes to ``report`` (its samples read before
    the damage are shuffled and yielded) and never raises."""
    report = ShardReport() if report is None else report
    order = shard_order(len(urls), seed=seed, stream=stream, pass_=pass_)
    for place in range(start.shard, len(urls)):
        i = order[place]
        samples = list(read_shard(urls[i], place, 0, counts[i], report))
        skip = start.offset if place == start.shard else 0
        for j, k in enumerate(sample_order(len(samples), seed=seed, stream=stream, pass_=pass_, place=place)):
            if j >= skip:
                yield dataclasses.replace(samples[k], cursor_after=Cursor(place, j + 1))

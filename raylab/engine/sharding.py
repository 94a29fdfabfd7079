"""``raylab shard`` over a Ray cluster: each shard's read–resize–encode work as one Ray task.

:func:`raylab.data.shards.write_shards` cuts the listing into shard jobs whose content depends only on their slice
(:class:`raylab.data.shards.ShardJob`); :func:`ray_map` runs those jobs as tasks spread over the cluster's CPUs and
yields their results in job order, so the manifest is the one the one-process path writes, byte for byte. The
output must be a location every node can write (a shared file system, or ``s3://``/``gs://``): each task writes its
own shard there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ray

from ..errors import InputError, OutputError, RaylabError, one_line

J = TypeVar("J")


def ray_map(fn: Callable[[J], Any], jobs: Sequence[J], *, cpus: float = 1.0, gpus: float = 0.0,
            in_flight: int | None = None, retries: int = 2) -> Iterator[Any]:
    """``map(fn, jobs)`` as Ray tasks of ``cpus`` CPUs (and ``gpus`` GPUs) each (Ray's SPREAD strategy), results in job
    order.

    At most ``in_flight`` tasks are submitted ahead of the one awaited (default: twice the cluster's CPUs), so a
    listing of millions of images never puts all its jobs in the object store at once. A task that fails because
    its node died is retried ``retries`` times by Ray; one that raises (an unwritable output) ends the map with the
    task's one-line error.
    """
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=retries, scheduling_strategy="SPREAD")(fn)
    ahead = in_flight or max(2, int(2 * ray.cluster_resources().get("CPU", 1) / cpus))
    refs: list[Any] = []
    it = iter(jobs)
    for job in it:
        refs.append(task.remote(job))
        if len(refs) >= ahead:
            break
    done = 0
    while done < len(refs):
        try:
            yield ray.get(refs[done])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, Exception) else e
            kind = type(cause) if isinstance(cause, (InputError, OutputError)) else RaylabError
            raise kind(one_line(cause)) from None
        refs[done] = None  # let the result go
        done += 1
        nxt = next(it, None)
        if nxt is not None:
            refs.append(task.remote(nxt))

"""Shards written elsewhere (img2dataset, webdataset's own ``TarWriter``/``ShardWriter``, ...): their manifest, written
in place, so that every command streams them as it streams the shards ``raylab shard`` writes.

A shard is any tar of webdataset samples: members grouped by key (``0001.jpg``, ``0001.json``, ...), the image under
one of :data:`~.reader.IMAGE_EXTS`. The manifest lists each shard with the sample count the reader will find (counted
by the reader itself, so the engine's short-shard check holds), its byte size and sha256; the images keep their own
size and colour (``image_size`` and ``channels`` are null), and a sample without an image member is counted, then
skipped when read, as in any shard.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import fsspec

from ...errors import InputError, one_line
from ...store import Store
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, file_digest
from .reader import ShardReport, iter_samples


@dataclass(frozen=True)
class IndexedShard:
    """One shard as indexed: its manifest entry and the samples in it that hold no image."""

    info: ShardInfo
    without_image: int


#: ``map`` of :func:`index_shard` over shard URLs, results in order (a thread pool's, or Ray's ``ray_map``).
Mapper = Callable[[Callable[[str], "IndexedShard"], Sequence[str]], Iterable["IndexedShard"]]


def index_shard(url: str) -> IndexedShard:
    """Count the samples of the shard at ``url`` as the reader sees them, and hash it; InputError naming the shard
    when it is not a whole tar (an index of a damaged shard would pass its damage off as its length)."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    report = ShardReport()
    count = without_image = 0
    for sample in iter_samples([url], report=report):
        count += 1
        without_image += sample.data is None
    if report.shards_failed:
        raise InputError(f"{url}: cannot index this shard: {report.shards_failed[0][1]}; repair or remove it")
    size, sha256 = file_digest(*fsspec.core.url_to_fs(url))
    return IndexedShard(ShardInfo(name, count, size, sha256), without_image)


def shard_names(location: str) -> list[str]:
    """The ``.tar`` files directly in ``location`` (a folder or fsspec URL), sorted by name."""
    store = Store.at(location)
    fs, root = fsspec.core.url_to_fs(store.location)
    try:
        if not fs.isdir(root):
            raise InputError(f"{location}: no such folder of shards")
        found = fs.ls(root, detail=False)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{location}: cannot list this location ({one_line(e, with_type=True)})") from e
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found if p.lower().endswith(".tar"))
    if not names:
        raise InputError(f"{location}: no .tar shards here to index")
    return names


def index_shards(location: str | os.PathLike[str], *, progress: bool = False, mapper: Mapper | None = None,
                 threads: int = 4) -> tuple[Manifest, int]:
    """Write ``manifest.json`` for the ``.tar`` shards already in ``location``; (the manifest, samples without an
    image). Refused in one line, writing nothing, where a manifest is already there or a shard is damaged.

    Shards are indexed ``threads`` at a time (reading is mostly waiting on storage), or by ``mapper``, e.g.
    :func:`raylab.engine.sharding.ray_map` over a Ray cluster; results come back in shard order either way."""
    loc = os.fspath(location)
    store = Store.at(loc)
    names = shard_names(loc)
    if store.exists(MANIFEST_NAME):
        raise InputError(f"{store.path(MANIFEST_NAME)}: these shards are indexed already; remove it to index them again")
    from ...progress import bar

    indexed: list[IndexedShard] = []
    pool = ThreadPoolExecutor(max(1, threads))
    try:
        with bar(total=len(names), desc=f"indexing {loc}", unit="shard", disable=not progress) as shown:
            for one in (mapper or pool.map)(index_shard, [store.path(n) for n in names]):
                indexed.append(one)  # the bar closes before a refusal, so it does not print after it
                shown.update()
    finally:
        pool.shutdown(cancel_futures=True)  # after a refusal, the shards not yet begun are not read
    if not any(s.info.count for s in indexed):
        raise InputError(f"{loc}: its {len(names)} .tar file(s) hold no webdataset sample")
    manifest = Manifest(location=store.location, shards=tuple(s.info for s in indexed),
                        total=sum(s.info.count for s in indexed), image_size=None, channels=None,
                        source=f"{loc} (indexed in place)", seed=None, sample=None, skipped=(), split=None)
    store.write_bytes(MANIFEST_NAME, manifest.to_json())
    return manifest, sum(s.without_image for s in indexed)

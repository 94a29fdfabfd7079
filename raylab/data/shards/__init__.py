"""Natural images as webdataset tar shards, written once and streamed to Ray workers.

Writing (:func:`write_shards`, in :mod:`.writer`) turns an image folder, a
list of image files or a MedMNIST ``.npz`` split into ``shard-000000.tar``,
``shard-000001.tar``, ... plus a ``manifest.json`` (written last) that lists
every shard with its sample count, byte size and sha256. The output may be a
local directory or any fsspec URL (``memory://``, ``file://``, ``s3://``, ...);
every file goes through :class:`raylab.store.Store`, so each is written
atomically and an unwritable location raises :class:`raylab.errors.OutputError`.

Each sample holds ``<key>.jpg`` or ``<key>.png`` (the image), ``<key>.name.txt``
(the original file name) and, for ``.npz`` sources, ``<key>.cls`` (the label).
Keys are ``f"{k:08d}"``: the shard's first position in the listing plus the
record's place in the shard (unique and sorted; without skipped images, the
item's position). Each shard is written from its own slice of the listing
(:class:`ShardJob`), so shards can be written in parallel over a Ray cluster
(:func:`raylab.engine.sharding.ray_map`) with the same bytes.

The manifest (:class:`Manifest`, :func:`read_manifest`, :func:`verify_manifest`)
lives in :mod:`.manifest`; shards written elsewhere (img2dataset, webdataset's writers) get theirs, in place, from
:func:`index_shards` (:mod:`.index`).

Reading is a stream that never raises for bad shard content:
:func:`iter_samples` (:mod:`.reader`) yields raw samples and records missing,
truncated or corrupt shards in a :class:`ShardReport`; :func:`decode_stream`
(:mod:`.decode`) decodes them (undecodable images are skipped and recorded as
``"<shard>:<key>"``); :func:`batches` (:mod:`.batch`) stacks them, and
:func:`load_shard_images` (:mod:`.memory`) decodes a whole location into one tensor. Every sample and batch carries the
:class:`Cursor` after it, so a reader can resume exactly where it stopped.
"""

from .manifest import FORMAT, MANIFEST_NAME, Manifest, ShardInfo, read_manifest, verify_manifest
from .batch import Batch, batches
from .decode import decode_stream
from .index import index_shards
from .memory import load_shard_images
from .reader import DEFAULT_MAX_PIXELS, IMAGE_EXTS, Cursor, RawSample, ShardReport, iter_samples
from .writer import ShardJob, write_shard, write_shards

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT",
    "IMAGE_EXTS",
    "MANIFEST_NAME",
    "Batch",
    "Cursor",
    "Manifest",
    "RawSample",
    "ShardInfo",
    "ShardJob",
    "ShardReport",
    "batches",
    "decode_stream",
    "index_shards",
    "iter_samples",
    "load_shard_images",
    "read_manifest",
    "verify_manifest",
    "write_shard",
    "write_shards",
]

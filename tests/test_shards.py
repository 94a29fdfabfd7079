"""Webdataset shards of real natural and medical images: writing, manifests, resumable and fault-tolerant reading."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.data.image import decode_image
from raylab.data.natural import list_images
from raylab.data.shards import (
    Cursor,
    Manifest,
    ShardInfo,
    ShardReport,
    batches,
    decode_stream,
    index_shards,
    iter_samples,
    read_manifest,
    verify_manifest,
    write_shards,
)
from raylab.errors import InputError, OutputError

from .conftest import FLICKR, IMAGENET, PNEUMONIA


def _sampled_names(k: int, seed: int) -> list[str]:
    files = list_images(IMAGENET)
    picked = sorted(random.Random(seed).sample(range(len(files)), k))
    return [files[i].relative_to(IMAGENET).as_posix() for i in picked]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def raw_shards(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """50 real ImageNet JPEGs, bytes unchanged, in shards of 16 (read-only: copy before damaging)."""
    return write_shards(IMAGENET, tmp_path_factory.mktemp("raw") / "shards", sample=50, shard_size=16, seed=0)


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """40 real ImageNet photos as 3 x 32 x 32 PNGs in shards of 8 (cheap to decode many times)."""
    return write_shards(IMAGENET, tmp_path_factory.mktemp("small") / "shards", sample=40, shard_size=8, seed=1,
                        size=32, channels=3)


def _copy(m: Manifest, dest: Path) -> Path:
    shutil.copytree(m.location, dest)
    return dest


def _bad_shard(path: Path) -> None:
    """A hand-made shard: good JPEG, truncated JPEG, a sample with no image, good JPEG."""
    files = list_images(IMAGENET)[:3]
    good, cut, good2 = (f.read_bytes() for f in files)
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "00000000", "jpg": good, "name.txt": b"good.jpg"})
        w.write({"__key__": "00000001", "jpg": cut[: len(cut) // 2], "name.txt": b"cut.jpg"})
        w.write({"__key__": "00000002", "name.txt": b"nothing.jpg"})
        w.write({"__key__": "00000003", "jpg": good2, "name.txt": b"good2.jpg"})


# --------------------------------------------------------------------------- writing


def test_write_imagenet_sample_keeps_bytes_names_and_counts(raw_shards: Manifest) -> None:
    m = raw_shards
    out = Path(m.location)
    assert [s.count for s in m.shards] == [16, 16, 16, 2] and m.total == 50
    assert [s.name for s in m.shards] == [f"shard-{i:06d}.tar" for i in range(4)]
    for s in m.shards:
        assert (out / s.name).stat().st_size == s.bytes and _sha(out / s.name) == s.sha256
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["format"] == "raylab.shards/1" and doc["total"] == 50 and doc["sample"] == 50 and doc["seed"] == 0
    assert doc["image_size"] is None and doc["channels"] is None and doc["skipped"] == []
    assert [s["count"] for s in doc["shards"]] == [16, 16, 16, 2]
    assert read_manifest(out) == m and read_manifest(out / "manifest.json") == m
    assert not list(out.glob(".*")), "temporary files left behind"
    # what a location without a manifest is instead (each said only "no shard manifest here", or a NotADirectoryError)
    for wrong, why in [(IMAGENET, f"{IMAGENET}: a folder of images, not a shard location; write shards from it first"),
                       (out / "shard-000000.tar", f"{out}/shard-000000.tar: a file, not a shard location; give the "
                                                  f"folder that holds its manifest.json ({out})"),
                       (out / "nowhere", f"{out}/nowhere: no such shard location")]:
        with pytest.raises(InputError) as e:
            read_manifest(wrong)
        assert str(e.value).startswith(why), str(e.value)

    report = ShardReport()
    samples = list(iter_samples(m, report=report))
    assert report.shards_failed == [] and report.images.count == 0
    assert [r.key for r in samples] == [f"{i:08d}" for i in range(50)]
    assert [r.name for r in samples] == _sampled_names(50, seed=0)
    assert [r.shard for r in samples] == [s.name for s in m.shards for _ in range(s.count)]
    for r in samples:
        assert r.ext == "jpg" and r.label is None
        assert r.data == (IMAGENET / r.name).read_bytes()


def test_seed_decides_the_sample(raw_shards: Manifest, tmp_path: Path) -> None:
    again = write_shards(IMAGENET, tmp_path / "same", sample=50, shard_size=16, seed=0)
    other = write_shards(IMAGENET, tmp_path / "other", sample=50, shard_size=16, seed=1)
    names = lambda m: [r.name for r in iter_samples(m)]  # noqa: E731
    assert names(again) == names(raw_shards)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in raw_shards.shards]  # reproducible bytes
    assert names(other) != names(raw_shards) and names(other) == _sampled_names(50, seed=1)


def test_write_from_a_list_of_files(tmp_path: Path) -> None:
    files = list_images(IMAGENET)[:5]
    m = write_shards([str(f) for f in reversed(files)], tmp_path / "s", shard_size=2)
    assert [s.count for s in m.shards] == [2, 2, 1]
    assert [r.name for r in iter_samples(m)] == [f.name for f in files]


def test_write_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot sample 1001 of 1000"):
        write_shards(IMAGENET, tmp_path / "s", sample=1001)
    with pytest.raises(InputError, match="shard_size"):
        write_shards(IMAGENET, tmp_path / "s", shard_size=0)
    with pytest.raises(InputError, match="channels"):
        write_shards(IMAGENET, tmp_path / "s", channels=2)
    with pytest.raises(InputError, match="not-there"):
        write_shards(tmp_path / "not-there", tmp_path / "s")


def test_size_and_channels_store_lossless_png(tmp_path: Path) -> None:
    m = write_shards(IMAGENET, tmp_path / "s", sample=12, shard_size=5, seed=3, size=32, channels=1)
    assert [s.count for s in m.shards] == [5, 5, 2] and m.image_size == 32 and m.channels == 1
    samples = list(iter_samples(m))
    assert [r.name for r in samples] == _sampled_names(12, seed=3)
    for r in samples:
        assert r.ext == "png"
        stored = decode_image(r.data, channels=1, size=None)
        expected = decode_image((IMAGENET / r.name).read_bytes(), channels=1, size=32)
        assert stored.shape == (1, 32, 32) and torch.equal(stored, expected)


def test_sources_from_a_list_file_and_from_an_fsspec_url(tmp_path: Path) -> None:
    files = sorted(IMAGENET.iterdir())[:5]
    listing = tmp_path / "files.txt"
    listing.write_text("# five photos\n" + "\n".join(str(f) for f in files) + "\n")
    m = write_shards(listing, tmp_path / "from-list", shard_size=10)
    assert m.total == 5 and [r.name for r in iter_samples(m)] == [f.name for f in files]
    listing.write_text("\n".join([str(files[0]), "gone-1.jpg", str(files[1]), "", "gone-2.jpg"]) + "\n")
    with pytest.raises(InputError) as e:  # the list named by file and line, not only the missing path
        write_shards(listing, tmp_path / "bad-list", shard_size=10)
    assert str(e.value) == f"{listing}: line 2: {tmp_path / 'gone-1.jpg'} is not a file (and 1 more of its 4 listed files)"
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in files[:3]:
        fs.pipe(f"/photos-src/{f.name}", f.read_bytes())
    fs.pipe("/photos-src/notes.md", b"not an image")
    m = write_shards("memory://photos-src", tmp_path / "from-url", shard_size=10)
    got = list(iter_samples(m))
    assert [r.name for r in got] == [f.name for f in files[:3]]
    assert got[0].data == files[0].read_bytes()
    with pytest.raises(InputError, match="not a folder"):
        write_shards("memory://no-such-folder", tmp_path / "x")


def test_jpg_format_stores_resized_jpeg_close_to_the_original(tmp_path: Path) -> None:
    m = write_shards(IMAGENET, tmp_path / "j", sample=6, shard_size=6, seed=3, size=64, channels=3, image_format="jpg")
    for r in iter_samples(m):
        assert r.ext == "jpg" and r.data[:2] == b"\xff\xd8"  # a JPEG
        stored = decode_image(r.data, channels=3, size=None).float()
        expected = decode_image((IMAGENET / r.name).read_bytes(), channels=3, size=64).float()
        assert stored.shape == (3, 64, 64) and (stored - expected).abs().mean() < 4  # quality 95: small loss
    with pytest.raises(InputError, match="image_format must be 'png' or 'jpg'"):
        write_shards(IMAGENET, tmp_path / "x", sample=2, size=64, image_format="webp")
    with pytest.raises(InputError, match=r"^size must be 1 to 4096 px, got 60000$"):  # not a MemoryError per image
        write_shards(IMAGENET, tmp_path / "x", sample=2, size=60000)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("channels", [3, 1])
def test_stored_size_jpegs_decode_to_pils_pixels_on_the_fast_path(tmp_path: Path, channels: int) -> None:
    """libjpeg-turbo through torchvision (the reader's fast path) against PIL, on real photos stored at 64 px."""
    from PIL import Image

    from raylab.data import jpeg

    m = write_shards(IMAGENET, tmp_path / "j", sample=24, shard_size=24, seed=5, size=64, channels=channels,
                     image_format="jpg")
    for r in iter_samples(m):
        with Image.open(io.BytesIO(r.data)) as header:
            assert jpeg.eligible(header, channels=channels, size=64)
            assert not jpeg.eligible(header, channels=channels, size=32)  # a resize goes to PIL
        for as_channels in {channels, 3}:  # a gray JPEG read as RGB too
            fast = jpeg.decode(r.data, channels=as_channels)
            assert fast is not None and fast.dtype == torch.uint8
            assert torch.equal(fast, decode_image(r.data, channels=as_channels, size=64, fast_jpeg=False))
            assert torch.equal(decode_image(r.data, channels=as_channels, size=64), fast)
    rgb = next(iter_samples(write_shards(IMAGENET, tmp_path / "rgb", sample=1, size=64, channels=3, image_format="jpg")))
    with Image.open(io.BytesIO(rgb.data)) as header:
        assert not jpeg.eligible(header, channels=1, size=64)  # PIL's luma, not libjpeg's Y: PIL decodes it
    cut = rgb.data[: len(rgb.data) // 2]
    assert jpeg.decode(cut, channels=3) is None
    with pytest.raises(InputError, match="cut: cannot decode image .OSError: image file is truncated"):  # PIL's message
        decode_image(cut, channels=3, size=64, name="cut")


def test_threaded_decode_yields_the_same_stream_and_skips(tmp_path: Path) -> None:
    _bad_shard(tmp_path / "bad.tar")
    m = write_shards(IMAGENET, tmp_path / "j", sample=20, shard_size=7, seed=1, size=32, channels=3, image_format="jpg")
    urls = [str(tmp_path / "bad.tar"), *m.urls]
    runs = []
    for threads in (1, 3):
        report = ShardReport()
        decoded = list(decode_stream(iter_samples(urls, report=report), channels=3, size=32, report=report,
                                     threads=threads))
        runs.append(([(r.shard, r.key) for r, _ in decoded], torch.stack([t for _, t in decoded]), report.images.skipped))
    (keys1, images1, skipped1), (keys3, images3, skipped3) = runs
    assert keys3 == keys1 and len(keys1) == 22 and torch.equal(images3, images1)
    assert skipped3 == skipped1 and [name for name, _ in skipped1] == ["bad.tar:00000001", "bad.tar:00000002"]
    report = ShardReport()
    stream = decode_stream(iter_samples(urls, report=report), channels=3, size=32, report=report, threads=2)
    first = [(pair[0].shard, pair[0].key) for pair, _ in zip(stream, range(3))]
    assert first == [("bad.tar", "00000000"), ("bad.tar", "00000003"), ("shard-000000.tar", "00000000")]
    stream.close()  # a consumer that stops early (a reader seeking) leaves no decode thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("raylab-decode")]
    with pytest.raises(InputError, match="threads must be >= 1"):
        decode_stream([], channels=3, size=32, report=ShardReport(), threads=0)


def test_jpegs_left_for_the_device_decode_there_to_the_readers_pixels(tmp_path: Path) -> None:
    """``device_jpegs=True``: stored-size JPEGs travel encoded, everything else is decoded by the reader; the
    worker's :func:`decode_batch` (here on the CPU) gives the reader's batch, and skips a cut JPEG by name."""
    from raylab.data.jpeg import Encoded, EncodedBatch, decode_batch

    _bad_shard(tmp_path / "bad.tar")  # original-size photos: resized by the reader
    m = write_shards(IMAGENET, tmp_path / "j", sample=10, shard_size=10, seed=2, size=32, channels=3, image_format="jpg")
    urls = [str(tmp_path / "bad.tar"), *m.urls]
    kw = dict(channels=3, size=32)
    reference = next(batches(decode_stream(iter_samples(urls), report=ShardReport(), **kw), 12))
    report = ShardReport()
    batch = next(batches(decode_stream(iter_samples(urls, report=report), report=report, device_jpegs=True, threads=2,
                                       **kw), 12))
    assert isinstance(batch.images, EncodedBatch) and batch.keys == reference.keys
    kinds = ["encoded" if isinstance(item, Encoded) else "decoded" for item in batch.images.items]
    assert kinds == ["decoded"] * 2 + ["encoded"] * 10
    images, skipped = decode_batch(batch.images, channels=3, device="cpu")
    assert skipped == [] and torch.equal(images, reference.images)
    cut = batch.images.items[5]
    items = list(batch.images.items)
    items[5] = Encoded(cut.data[: len(cut.data) * 2 // 3].clone(), cut.shape)
    images, skipped = decode_batch(EncodedBatch(items, batch.images.names), channels=3, device="cpu")
    assert [name for name, _ in skipped] == [batch.images.names[5]] and "truncated" in skipped[0][1]
    assert torch.equal(images, torch.cat([reference.images[:5], reference.images[6:]]))


def test_undecodable_file_is_skipped_at_write_time(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for f in list_images(IMAGENET)[:3]:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes((src / list_images(IMAGENET)[0].name).read_bytes()[:500])
    m = write_shards(src, tmp_path / "s", size=16)
    assert m.total == 3 and [name for name, _ in m.skipped] == ["broken.jpg"]
    assert [r.key for r in iter_samples(m)] == ["00000000", "00000001", "00000002"]
    assert read_manifest(tmp_path / "s").skipped == m.skipped


def test_npz_source_keeps_labels(tmp_path: Path) -> None:
    m = write_shards(PNEUMONIA, tmp_path / "s", split="test", sample=40, shard_size=16, seed=0)
    with np.load(PNEUMONIA) as z:
        images, labels = z["test_images"], z["test_labels"].reshape(-1)
    picked = sorted(random.Random(0).sample(range(len(images)), 40))
    samples = list(iter_samples(m))
    assert [r.name for r in samples] == [f"test/{i}" for i in picked]
    assert [r.label for r in samples] == [int(labels[i]) for i in picked]
    for r, i in zip(samples, picked):
        assert r.ext == "png"
        assert np.array_equal(decode_image(r.data, channels=1, size=None)[0].numpy(), images[i])
    report = ShardReport()
    got = list(batches(decode_stream(iter_samples(m), channels=1, size=None, report=report), 16))
    assert torch.equal(torch.cat([b.labels for b in got]), torch.tensor([int(labels[i]) for i in picked]))
    assert got[0].images.shape == (16, 1, 28, 28) and got[0].images.dtype == torch.uint8
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["split"] == "test"


def test_fsspec_memory_output() -> None:
    location = f"memory://raylab-test-{uuid.uuid4().hex}/shards"
    files = list_images(IMAGENET)[:7]
    try:
        m = write_shards(files, location, shard_size=3)
        back = read_manifest(location)
        assert back == m and back.urls[0] == f"{location}/shard-000000.tar"
        assert verify_manifest(back) == []
        samples = list(iter_samples(back))
        assert [r.data for r in samples] == [f.read_bytes() for f in files]
        assert [r.name for r in samples] == [f.name for f in files]
    finally:
        fsspec.filesystem("memory").rm(location.removeprefix("memory://").split("/")[0], recursive=True)


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def read_only_dirs(tmp_path: Path) -> Iterator[Path]:
    """``empty/`` and ``written/`` (a shard set) that cannot be written: chmod 0o555, or where that does not stop
    writes (root) a tmpfs remounted read-only; skipped when neither can be had."""
    base = tmp_path / "ro"
    base.mkdir()
    dirs = (base / "empty", base / "written")

    def fill() -> None:
        dirs[0].mkdir()
        write_shards(list_images(IMAGENET)[:3], dirs[1], shard_size=2)

    fill()
    for d in dirs:
        d.chmod(0o555)
    mounted = False
    try:
        if _can_write(dirs[0]):  # root: permissions do not apply
            for d in dirs:
                d.chmod(0o755)
                shutil.rmtree(d)
            if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                                                str(base)], capture_output=True).returncode != 0:
                pytest.skip("chmod does not stop writes here and a tmpfs cannot be mounted")
            mounted = True
            fill()
            subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
            if _can_write(dirs[0]):
                pytest.skip("cannot make a read-only folder here")
        yield base
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], check=False)
        for d in dirs:
            if d.exists():
                d.chmod(0o755)


def test_a_read_only_output_location_fails_with_one_line_naming_the_file(read_only_dirs: Path) -> None:
    files = list_images(IMAGENET)[:3]
    empty, written = read_only_dirs / "empty", read_only_dirs / "written"
    with pytest.raises(OutputError, match=r"^cannot write /\S*/ro/empty/shard-000000\.tar \(.+\)$") as e:
        write_shards(files, empty, shard_size=2)
    assert "\n" not in str(e.value)
    assert list(empty.iterdir()) == []  # no temporary file, no manifest
    before = {p.name: p.read_bytes() for p in written.iterdir()}
    with pytest.raises(OutputError, match=r"^cannot remove /\S*/ro/written/manifest\.json \(.+\)$"):
        write_shards(files, written, shard_size=2)
    assert {p.name: p.read_bytes() for p in written.iterdir()} == before  # the old shard set is left whole
    assert read_manifest(written).total == 3


# --------------------------------------------------------------------------- resuming


def test_resume_from_any_batch_cursor(small_shards: Manifest, tmp_path: Path) -> None:
    # A damaged shard in the middle: the samples skipped there must be counted by the cursor too.
    _bad_shard(tmp_path / "bad.tar")
    urls = small_shards.urls[:2] + [str(tmp_path / "bad.tar")] + small_shards.urls[2:]
    raws = [(r.shard, r.key, r.cursor_after) for r in iter_samples(urls)]
    cursors = [c for _, _, c in raws]
    report = ShardReport()
    full = list(batches(decode_stream(iter_samples(urls), channels=3, size=32, report=report), 5))
    assert report.images.count == 2 and [len(b.keys) for b in full] == [5] * 8 + [2]
    for k, b in enumerate(full):
        tail = raws[cursors.index(b.cursor_after) + 1:]
        assert [(r.shard, r.key, r.cursor_after) for r in iter_samples(urls, start=b.cursor_after)] == tail
        again = ShardReport()
        resumed = batches(decode_stream(iter_samples(urls, start=b.cursor_after), channels=3, size=32,
                                        report=again), 5)
        assert [(x.keys, x.cursor_after) for x in resumed] == [(c.keys, c.cursor_after) for c in full[k + 1:]]
        assert again.images.skipped == [s for s in report.images.skipped if k < 3]  # bad.tar lies in batch 3


def test_resume_at_shard_boundaries(small_shards: Manifest) -> None:
    m = small_shards
    full = list(batches(decode_stream(iter_samples(m), channels=3, size=None, report=ShardReport()), 8))
    assert [b.cursor_after for b in full] == [Cursor(i, 8) for i in range(5)]  # every cursor at a shard end
    keys = [k for b in full for k in b.keys]
    for source in (m, m.urls):  # with counts (the shard is not opened) and without (it is read through)
        for k, b in enumerate(full):
            rest = [r.key for r in iter_samples(source, start=b.cursor_after)]
            assert rest == keys[8 * (k + 1):]
        assert [r.key for r in iter_samples(source, start=Cursor(2, 3))] == keys[19:]
    assert list(iter_samples(m, start=Cursor(9, 0))) == []
    with pytest.raises(InputError):
        iter_samples(m, start=Cursor(-1, 0))


def test_the_seeded_order_visits_every_sample_once_and_a_cursor_in_it_resumes_it(small_shards: Manifest,
                                                                                 tmp_path: Path) -> None:
    """The paper's "randomly without replacement" over a stream: every sample once a pass, in an order set by the seed,
    the reader (stream) and the pass, the same for the same ones; and from any batch's cursor, exactly the rest."""
    from raylab.data.shards.order import shuffled_samples

    _bad_shard(tmp_path / "bad.tar")
    urls = small_shards.urls[:2] + [str(tmp_path / "bad.tar")] + small_shards.urls[2:]
    counts = [None] * len(urls)
    plain = [r.key for r in iter_samples(urls)]

    def keys(**kw) -> list[str]:
        return [r.key for r in shuffled_samples(urls, counts, **kw)]

    first = keys(seed=0, stream=0, pass_=0)
    assert sorted(first) == sorted(plain) and len(first) == len(plain) == 44  # each raw sample once
    assert first == keys(seed=0, stream=0, pass_=0)  # the same order for the same seed, stream and pass
    others = [keys(seed=1, stream=0, pass_=0), keys(seed=0, stream=1, pass_=0), keys(seed=0, stream=0, pass_=1)]
    assert first != plain and all(o != first and sorted(o) == sorted(first) for o in others)
    report = ShardReport()
    full = list(batches(decode_stream(shuffled_samples(urls, counts, seed=0, stream=0, pass_=0, report=report),
                                      channels=3, size=32, report=report), 5))
    assert report.images.count == 2 and sum(len(b.keys) for b in full) == 42  # bad.tar: one cut, one without image
    for k, b in enumerate(full):
        again = ShardReport()
        resumed = batches(decode_stream(shuffled_samples(urls, counts, seed=0, stream=0, pass_=0, start=b.cursor_after,
                                                         report=again), channels=3, size=32, report=again), 5)
        assert [(x.keys, x.cursor_after) for x in resumed] == [(c.keys, c.cursor_after) for c in full[k + 1:]]


# --------------------------------------------------------------------------- damage


def test_corrupt_image_and_sample_without_image(tmp_path: Path) -> None:
    _bad_shard(tmp_path / "bad.tar")
    report = ShardReport()
    decoded = list(decode_stream(iter_samples([str(tmp_path / "bad.tar")], report=report), channels=3, size=24,
                                 report=report))
    assert [r.key for r, _ in decoded] == ["00000000", "00000003"]
    assert all(t.shape == (3, 24, 24) for _, t in decoded)
    assert report.shards_failed == []
    assert [name for name, _ in report.images.skipped] == ["bad.tar:00000001", "bad.tar:00000002"]
    reasons = [reason for _, reason in report.images.skipped]
    assert "cannot decode" in reasons[0] and reasons[1] == "no image in sample"
    assert all("\n" not in r for r in reasons)


def _complete_before(data: bytes, cut: int) -> list[str]:
    """Keys of the samples all of whose members end at or before byte ``cut``."""
    ends: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf.getmembers():
            key = member.name.split(".", 1)[0]
            ends[key] = max(ends.get(key, 0), member.offset_data + member.size)
    return [k for k, end in ends.items() if end <= cut]


def _first_member_offsets(data: bytes) -> list[int]:
    seen: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf.getmembers():
            seen.setdefault(member.name.split(".", 1)[0], member.offset)
    return list(seen.values())


@pytest.mark.parametrize("where", ["half", "sample boundary"])
def test_truncated_and_missing_shards(raw_shards: Manifest, tmp_path: Path, where: str) -> None:
    out = _copy(raw_shards, tmp_path / "s")
    shard1 = out / "shard-000001.tar"
    data = shard1.read_bytes()
    cut = len(data) // 2 if where == "half" else _first_member_offsets(data)[9]
    shard1.write_bytes(data[:cut])
    (out / "shard-000002.tar").unlink()
    all_keys = [r.key for r in iter_samples(raw_shards)]
    kept = _complete_before(data, cut)
    assert 0 < len(kept) < 16
    m = read_manifest(out)
    counts = [s.count for s in m.shards]
    # a bare URL list misses a shard cut at a member boundary (a clean, shorter tar); its manifest counts don't
    for source, kw, expect_failed in ((m, {}, 2), (m.urls, {}, 2 if where == "half" else 1), (m.urls, {"counts": counts}, 2)):
        report = ShardReport()
        keys = [r.key for r in iter_samples(source, report=report, **kw)]
        assert keys == all_keys[:16] + all_keys[16:16 + len(kept)] + all_keys[48:]
        assert keys[16:16 + len(kept)] == kept
        failed = dict(report.shards_failed)
        assert len(failed) == expect_failed and "missing" in failed["shard-000002.tar"]
        if expect_failed == 2:
            assert "shard-000001.tar" in failed
        assert all("\n" not in r for r in failed.values())
    problems = verify_manifest(m)
    assert len(problems) == 2
    assert problems[0].startswith("shard-000001.tar:") and problems[1].startswith("shard-000002.tar: missing")
    with pytest.raises(InputError, match="counts: 1 value"):
        iter_samples(m.urls, counts=[16])


def test_shards_stored_gray_or_small_are_said_to_be_less_than_a_model_takes(raw_shards: Manifest) -> None:
    import dataclasses

    stored = dataclasses.replace(raw_shards, channels=1, image_size=28)
    assert stored.short_of(channels=1, size=28) is None and stored.short_of(channels=1, size=16) is None
    assert "gray (RGB inputs get no colour)" in (stored.short_of(channels=3, size=28) or "")
    both = stored.short_of(channels=3, size=64) or ""
    assert "gray (RGB inputs get no colour) and at 28 px (upsampled to its 64 px)" in both
    assert both.endswith("`raylab shard ... --image-size 64 --channels 3`, or without resizing")
    assert raw_shards.short_of(channels=3, size=299) is None  # stored as they are: nothing lost


def test_verify_manifest_finds_changed_and_missing_shards(raw_shards: Manifest, tmp_path: Path) -> None:
    assert verify_manifest(raw_shards) == []
    out = _copy(raw_shards, tmp_path / "s")
    shard0 = out / "shard-000000.tar"
    data = bytearray(shard0.read_bytes())
    data[5000] ^= 0xFF  # same size, different bytes
    shard0.write_bytes(bytes(data))
    (out / "shard-000003.tar").unlink()
    problems = verify_manifest(read_manifest(out))
    assert len(problems) == 2
    assert problems[0].startswith("shard-000000.tar: sha256")
    assert problems[1].startswith("shard-000003.tar: missing")


def _manifest_doc() -> dict:
    return {"format": "raylab.shards/1", "source": "x", "split": None, "seed": 0, "sample": None,
            "image_size": None, "channels": None, "total": 3,
            "shards": [{"name": "shard-000000.tar", "count": 3, "bytes": 10, "sha256": "ab"}], "skipped": []}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no shard manifest"),
        ("{not json", "not a JSON"),
        (json.dumps([1, 2]), "not a shard manifest"),
        (json.dumps({**_manifest_doc(), "format": "other/1"}), "format"),
        (json.dumps({**_manifest_doc(), "total": 4}), "sum to 3 but total is 4"),
        (json.dumps({**_manifest_doc(), "shards": [{"name": "../x.tar", "count": 3, "bytes": 1, "sha256": ""}]}),
         "shard entry 0"),
    ],
)
def test_bad_manifest_is_one_line_input_error(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest_doc()))
    assert read_manifest(tmp_path).total == 3


def test_batches_need_a_size_for_mixed_image_sizes(raw_shards: Manifest) -> None:
    decoded = decode_stream(iter_samples(raw_shards.urls[3:]), channels=1, size=None, report=ShardReport())
    with pytest.raises(InputError, match="give a size"):
        list(batches(decoded, 2))


# --------------------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def fuzz_dir() -> Path:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture(scope="module")
def small_tar(small_shards: Manifest) -> bytes:
    with fsspec.open(small_shards.url(0), "rb") as f:
        return f.read()


def _read_all(path: Path, count: int) -> tuple[int, int, ShardReport]:
    manifest = Manifest(str(path.parent), (ShardInfo(path.name, count, 0, ""),), count, None, None, "fuzz", 0,
                        None, ())
    report = ShardReport()
    raw = list(iter_samples(manifest, report=report))
    decoded = list(decode_stream(iter(raw), channels=1, size=8, report=report))
    assert len(decoded) + report.images.count == len(raw)
    if len(raw) < count:
        assert [name for name, _ in report.shards_failed] == [path.name]
    return len(raw), len(decoded), report


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.binary(max_size=4096))
def test_fuzz_random_bytes_as_a_shard(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "fuzz.tar"
    path.write_bytes(data)
    _read_all(path, 1)


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data())
def test_fuzz_damaged_real_shard(fuzz_dir: Path, small_tar: bytes, data: st.DataObject) -> None:
    blob = bytearray(small_tar)
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        i = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[i] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    path = fuzz_dir / "damaged.tar"
    path.write_bytes(bytes(blob[:cut]))
    _read_all(path, 8)


def test_shards_written_elsewhere_are_indexed_in_place_and_streamed(cluster, tmp_path, capsys) -> None:
    """Shards of webdataset's own ShardWriter (img2dataset's layout: jpg, json and txt members, keys of its own, one
    sample without an image) get a manifest from `raylab index-shards` and stream as raylab's own do; a damaged
    shard, a second index and a folder without shards are refused in one line, writing nothing."""
    from raylab.cli import main
    from raylab.data.shards import load_shard_images

    photos = sorted(FLICKR.iterdir())[:12]
    loc = tmp_path / "foreign"
    loc.mkdir()
    with wds.ShardWriter(str(loc / "%05d.tar"), maxcount=5, verbose=0) as w:
        for i, f in enumerate(photos):
            w.write({"__key__": f"{i:09d}", "jpg": f.read_bytes(), "json": json.dumps({"url": f.name}).encode(),
                     "txt": b"a caption"})
        w.write({"__key__": "meta", "json": b"{}"})
    with pytest.raises(InputError, match=f"`raylab index-shards {loc}` writes it"):
        read_manifest(loc)  # how `generate --shards` and every reader meet such a folder
    assert main(["index-shards", str(loc)]) == 0
    assert capsys.readouterr().out.strip().endswith("indexed 13 samples in 3 shard(s) at " + str(loc) + ": wrote "
                                                     f"{loc}/manifest.json; 1 sample(s) hold no image and will be skipped")
    m = read_manifest(loc)
    assert [(s.name, s.count) for s in m.shards] == [("00000.tar", 5), ("00001.tar", 5), ("00002.tar", 3)]
    assert m.total == 13 and m.image_size is None and verify_manifest(m) == []
    loaded = load_shard_images(str(loc), channels=3, size=32)
    expected = torch.stack([decode_image(f.read_bytes(), name=f.name, channels=3, size=32) for f in photos])
    assert torch.equal(loaded.images, expected) and [s.split(": ")[0] for s in loaded.skipped] == ["00002.tar:meta"]
    assert main(["index-shards", str(loc)]) == 2
    assert "these shards are indexed already; remove it to index them again" in capsys.readouterr().err
    first = (loc / "manifest.json").read_bytes()
    (loc / "manifest.json").unlink()  # as Ray tasks over a cluster: the same manifest
    assert main(["index-shards", str(loc), "--ray", "--cpus-per-task", "0.5", "--address", cluster["address"]]) == 0
    assert (loc / "manifest.json").read_bytes() == first
    (loc / "manifest.json").unlink()
    tar = loc / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])  # cut inside its first photo
    assert main(["index-shards", str(loc)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tar}: cannot index this shard: truncated or corrupt tar" in err and not (loc / "manifest.json").exists()
    assert main(["index-shards", str(tmp_path / "g")]) == 2
    assert "no such folder of shards" in capsys.readouterr().err
    # raylab's own shards, their manifest lost, indexed again (through an fsspec URL): the same entries
    own = write_shards(IMAGENET, "memory://index-test/own", shard_size=10, sample=25, size=28, channels=1)
    fsspec.filesystem("memory").rm("/index-test/own/manifest.json")
    again, without_image = index_shards("memory://index-test/own")
    assert again.shards == own.shards and again.total == 25 and without_image == 0

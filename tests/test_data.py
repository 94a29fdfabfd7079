"""Medical and natural-image loading on real data and real (broken) files."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from raylab.data.medical import (MedicalSet, load_csv_folder, load_medical, load_medmnist, medmnist_class_names,
                                 medmnist_info)
from raylab.data.memory import ImageStack
from raylab.data.image import SkipReport, decode_image
from raylab.data.natural import list_images, load_image_folder
from raylab.errors import InputError

from .conftest import FLICKR, IMAGENET, PNEUMONIA


@pytest.fixture(scope="module")
def pneumonia_set() -> MedicalSet:
    return load_medmnist(PNEUMONIA)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real colour ImageNet photo, 96 x 64."""
    with Image.open(sorted(IMAGENET.iterdir())[0]) as im:
        return im.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR)


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _assert_one_line(e: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, msg


# --- medical -------------------------------------------------------------------------------------

def test_pneumoniamnist_loads(pneumonia_set: MedicalSet) -> None:
    d = pneumonia_set
    assert d.name == "pneumoniamnist"
    assert d.class_names == ("NORMAL", "PNEUMONIA") and d.num_classes == 2
    assert (d.channels, d.image_size) == (1, 28)
    for x, y, n in ((d.train_images, d.train_labels, 4708), (d.val_images, d.val_labels, 524),
                    (d.test_images, d.test_labels, 624)):
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
    assert torch.bincount(d.train_labels).tolist() == [1214, 3494]
    assert torch.bincount(d.test_labels).tolist() == [234, 390]


def test_resized_keeps_the_images(pneumonia_set: MedicalSet) -> None:
    assert pneumonia_set.resized(28) is pneumonia_set
    big = pneumonia_set.resized(64)
    assert big.train_images.shape == (4708, 1, 64, 64) and big.train_images.dtype == torch.uint8
    assert big.val_images.shape == (524, 1, 64, 64) and big.test_images.shape == (624, 1, 64, 64)
    assert big.image_size == 64 and torch.equal(big.train_labels, pneumonia_set.train_labels)
    back = big.resized(28).test_images.float()
    assert (back - pneumonia_set.test_images.float()).abs().mean() < 4.0
    assert load_medmnist(PNEUMONIA, size=32).test_images.shape == (624, 1, 32, 32)


def _small_npz(tmp_path: Path, name: str = "small.npz", **override) -> Path:
    with np.load(PNEUMONIA) as z:
        arrays = {k: z[k][:40] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case", ["missing_key", "label_count", "label_range", "float_images", "fractional_labels", "nonexistent", "junk"]
)
def test_npz_errors_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    kwargs = {}
    if case == "missing_key":
        path, expect = _small_npz(tmp_path, test_labels=None), "test_labels"
    elif case == "label_count":
        with np.load(PNEUMONIA) as z:
            path, expect = _small_npz(tmp_path, train_labels=z["train_labels"][:39]), "39"
    elif case == "label_range":
        path, expect, kwargs = _small_npz(tmp_path), "out of range", {"class_names": ("NORMAL",)}
    elif case == "float_images":
        with np.load(PNEUMONIA) as z:
            path, expect = _small_npz(tmp_path, test_images=z["test_images"][:40] / 255.0), "float64"
    elif case == "fractional_labels":
        path, expect = _small_npz(tmp_path, test_labels=np.full((40, 1), 0.5)), "test_labels"
    elif case == "nonexistent":
        path, expect = tmp_path / "nowhere.npz", "does not exist"
    else:
        path, expect = tmp_path / "junk.npz", "not a valid .npz"
        path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(InputError) as e:
        load_medmnist(path, **kwargs)
    _assert_one_line(e, path.name, expect)


def test_rgb_npz_loads_with_three_channels(tmp_path: Path) -> None:
    with np.load(PNEUMONIA) as z:
        gray = z["train_images"][:30]
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    path = tmp_path / "colour.npz"
    labels = np.arange(30) % 3
    np.savez(path, train_images=rgb, train_labels=labels, test_images=rgb[:10], test_labels=labels[:10, None] * 1.0)
    d = load_medmnist(path)
    assert d.channels == 3 and d.train_images.shape == (30, 3, 28, 28)
    assert torch.equal(d.train_images[4, :, 5, 7], torch.from_numpy(rgb[4, 5, 7]))
    assert d.class_names == ("class0", "class1", "class2")
    assert d.test_labels.dtype == torch.int64 and d.test_labels.tolist() == labels[:10].tolist()
    assert d.val_images.shape == (0, 3, 28, 28) and d.val_labels.shape == (0,)
    assert d.resized(40).val_images.shape == (0, 3, 40, 40)


# --- MedMNIST class names from medmnist/info.py's INFO (raylab/data/medical/medmnist_info.json) ---------

_INFO_JSON = Path(__file__).resolve().parents[1] / "raylab" / "data" / "medical" / "medmnist_info.json"
_MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
                "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")


def _copy_as(tmp_path: Path, name: str, relabel=None) -> tuple[Path, dict[str, np.ndarray]]:
    """The real PneumoniaMNIST arrays (all splits) saved as ``name``, labels passed through ``relabel``."""
    with np.load(PNEUMONIA) as z:
        arrays = {k: z[k] for k in z.files}
    if relabel is not None:
        for k in ("train_labels", "val_labels", "test_labels"):
            arrays[k] = relabel(arrays[k])
    path = tmp_path / name
    np.savez(path, **arrays)
    return path, arrays


def test_medmnist_table_is_complete_and_well_formed() -> None:
    doc = json.loads(_INFO_JSON.read_text(encoding="utf-8"))
    src = doc["source"]
    assert src["package"] == "medmnist" and src["version"] and src["package_license"] == "Apache-2.0"
    assert "info.py" in src["copied_from"] and "INFO" in src["copied_from"]
    table = doc["datasets"]
    assert sorted(table) == sorted(_MEDMNIST_2D)
    for name, entry in table.items():
        n = len(entry["label"])
        assert n >= 2 and sorted(entry["label"]) == sorted(str(i) for i in range(n)), name
        assert all(isinstance(v, str) and v for v in entry["label"].values()), name
        assert entry["n_channels"] in (1, 3), name
        assert set(entry["n_samples"]) == {"train", "val", "test"} and min(entry["n_samples"].values()) > 0, name
        assert entry["python_class"].lower() == name and entry["task"], name
    # the file this table ships with is the real PneumoniaMNIST: its split sizes are the table's
    with np.load(PNEUMONIA) as z:
        assert {s: len(z[f"{s}_labels"]) for s in ("train", "val", "test")} == table["pneumoniamnist"]["n_samples"]


def test_breastmnist_gets_infos_names(tmp_path: Path) -> None:
    path, arrays = _copy_as(tmp_path, "breastmnist.npz")
    d = load_medmnist(path)
    assert d.class_names == ("malignant", "normal, benign") and d.num_classes == 2
    assert d.name == "breastmnist" and torch.equal(d.train_labels, torch.from_numpy(arrays["train_labels"]).long().view(-1))
    assert load_medical(path).class_names == d.class_names
    assert medmnist_info("BreastMNIST")["label"] == {"0": "malignant", "1": "normal, benign"}


def test_medmnist_plus_name_gets_dermamnists_seven_names(tmp_path: Path) -> None:
    def relabel(y: np.ndarray) -> np.ndarray:
        y = y.copy()
        y[::5] = np.arange(len(y[::5])).reshape(y[::5].shape) % 7
        return y

    path, arrays = _copy_as(tmp_path, "dermamnist_28.npz", relabel)
    assert set(np.unique(arrays["train_labels"])) == set(range(7))
    d = load_medmnist(path)
    assert d.class_names == (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
    )
    assert torch.bincount(d.train_labels, minlength=7).tolist() == np.bincount(arrays["train_labels"].ravel()).tolist()
    for other in ("DermaMNIST_224.npz", "dermamnist_64.npz", "dermamnist"):
        assert medmnist_class_names(other) == d.class_names
    assert medmnist_info(Path("somewhere") / "dermamnist_128.npz")["python_class"] == "DermaMNIST"


def test_labels_beyond_the_tables_classes_are_refused(tmp_path: Path) -> None:
    path, _ = _copy_as(tmp_path, "octmnist.npz", lambda y: np.where(np.arange(len(y)).reshape(y.shape) == 3, 4, y))
    with pytest.raises(InputError) as e:
        load_medmnist(path)
    _assert_one_line(e, "octmnist.npz", "OCTMNIST", "label 4", "4 classes")


def test_pneumoniamnist_keeps_its_upper_case_names(tmp_path: Path) -> None:
    path, _ = _copy_as(tmp_path, "pneumoniamnist.npz")
    assert load_medmnist(path).class_names == ("NORMAL", "PNEUMONIA")
    assert medmnist_class_names("pneumoniamnist_224.npz") == ("NORMAL", "PNEUMONIA")
    assert medmnist_info("pneumoniamnist")["label"] == {"0": "normal", "1": "pneumonia"}  # INFO's own spelling


def test_unknown_stem_keeps_numbered_names(tmp_path: Path) -> None:
    path, _ = _copy_as(tmp_path, "chest_xrays_28.npz")
    assert load_medmnist(path).class_names == ("class0", "class1")
    assert medmnist_info(path) is None and medmnist_info("dermamnist_extra") is None
    assert medmnist_info("organmnist3d") is None  # 3D sets are not in the table


def test_multi_label_chestmnist_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path, _ = _copy_as(tmp_path, "chestmnist.npz", lambda y: rng.integers(0, 2, size=(len(y), 14)).astype(np.uint8))
    with pytest.raises(InputError) as e:
        load_medmnist(path)
    _assert_one_line(e, "chestmnist.npz", "multi-label", "single-label classification only")
    single, _ = _copy_as(tmp_path, "ChestMNIST_64.npz")
    with pytest.raises(InputError) as e:
        load_medmnist(single)
    _assert_one_line(e, "ChestMNIST_64.npz", "multi-label", "single-label classification only")


def _csv_folder(tmp_path: Path, *, header: bool, names: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    with np.load(PNEUMONIA) as z:
        x, y = z["train_images"][:20], z["train_labels"][:20].reshape(-1)
    root = tmp_path / "medical"
    (root / "img").mkdir(parents=True)
    for split, idx in (("train", range(14)), ("test", range(14, 20))):
        lines = ["file,label"] if header else []
        for i in idx:
            Image.fromarray(x[i]).save(root / "img" / f"{i:03d}.png")
            lines.append(f"img/{i:03d}.png," + (("NORMAL", "PNEUMONIA")[y[i]] if names else str(y[i])))
        (root / f"{split}_pre.csv").write_text("\n".join(lines) + "\n")
    return root, x, y


@pytest.mark.parametrize(("header", "names"), [(True, False), (False, True), (True, True)])
def test_csv_folder_loads_real_images(tmp_path: Path, header: bool, names: bool) -> None:
    root, x, y = _csv_folder(tmp_path, header=header, names=names)
    d = load_csv_folder(root)
    assert d.train_images.shape == (14, 1, 28, 28) and d.test_images.shape == (6, 1, 28, 28)
    assert torch.equal(d.train_images[:, 0], torch.from_numpy(x[:14]))
    assert torch.equal(d.test_labels, torch.from_numpy(y[14:]).long())
    assert d.class_names == (("NORMAL", "PNEUMONIA") if names else ("class0", "class1"))
    assert d.val_images.shape == (0, 1, 28, 28)
    assert load_csv_folder(root, channels=3, size=32).train_images.shape == (14, 3, 32, 32)


def test_csv_folder_missing_image_names_it(tmp_path: Path) -> None:
    root, _, _ = _csv_folder(tmp_path, header=True, names=False)
    (root / "img" / "016.png").unlink()
    with pytest.raises(InputError) as e:
        load_csv_folder(root)
    _assert_one_line(e, "016.png", "does not exist")


def _colour_csv_folder(tmp_path: Path, photo_label: str = "PHOTO") -> Path:
    """A CSV folder as MedicalAI-UAP's skin-lesion set is one: colour photos of their own sizes (real Flickr photos,
    167-500 px) beside gray 28 px X-rays (real PneumoniaMNIST), three classes; the training split lists its X-rays
    first, the test split its photos first."""
    with np.load(PNEUMONIA) as z:
        x, y = z["train_images"][:12], z["train_labels"][:12].reshape(-1)
    photos = sorted(FLICKR.glob("*.jpg"))[:6]
    root = tmp_path / f"colour-{photo_label}"
    (root / "img").mkdir(parents=True)
    for split, xs, ps in (("train", range(8), photos[:4]), ("test", range(8, 12), photos[4:])):
        rays, shots = [], []
        for i in xs:
            Image.fromarray(x[i]).save(root / "img" / f"{i}.png")
            rays.append(f"img/{i}.png,{('NORMAL', 'PNEUMONIA')[y[i]]}")
        for p in ps:
            (root / "img" / p.name).write_bytes(p.read_bytes())
            shots.append(f"img/{p.name},{photo_label}")
        lines = ["file,label", *(rays + shots if split == "train" else shots + rays)]
        (root / f"{split}_pre.csv").write_text("\n".join(lines) + "\n")
    return root


def test_a_csv_folder_keeps_its_colour_and_is_resized_as_decoded(tmp_path: Path) -> None:
    """A CSV folder was always decoded gray (channels=1 by default): dermoscopy photos lost their colour, and a model
    of RGB inputs could not be audited on such a folder at all. Its images are now RGB unless every one is gray, and
    images of several sizes are resized as they are decoded (they were refused: 'give a size', which no command
    could)."""
    root = _colour_csv_folder(tmp_path)
    d = load_medical(root, size=32)
    assert d.channels == 3 and d.train_images.shape == (12, 3, 32, 32) and d.class_names == ("NORMAL", "PHOTO", "PNEUMONIA")
    photo = next(i for i, label in enumerate(d.train_labels.tolist()) if label == 1)
    assert not torch.equal(d.train_images[photo, 0], d.train_images[photo, 2])  # a colour photo keeps its colour
    first = sorted(FLICKR.glob("*.jpg"))[0]
    assert torch.equal(d.train_images[photo], decode_image(first.read_bytes(), channels=3, size=32))
    # each file is read once, as stored: an X-ray before the first photo, and one after it, are their gray repeated
    for images, labels, name in ((d.train_images, d.train_labels, "0.png"), (d.test_images, d.test_labels, "8.png")):
        ray = next(i for i, label in enumerate(labels.tolist()) if label != 1)
        expected = decode_image((root / "img" / name).read_bytes(), channels=1, size=32)
        assert torch.equal(images[ray], expected.expand(3, -1, -1))
    gray, _, _ = _csv_folder(tmp_path / "gray", header=True, names=True)  # X-rays only: one channel, as before
    assert load_csv_folder(gray).channels == 1 and load_csv_folder(gray, channels=3).channels == 3
    # to a gray model, as PIL converts them (ITU-R 601-2 luma); to an RGB one, gray repeated
    as_gray = d.with_channels(1)
    with Image.open(first) as im:
        expected = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).convert("L"))
    assert as_gray.channels == 1 and np.array_equal(as_gray.train_images[photo, 0].numpy(), expected)
    rgb = load_csv_folder(gray).with_channels(3)
    assert rgb.channels == 3 and torch.equal(rgb.train_images[:, 1], rgb.train_images[:, 0])


def test_images_of_two_sizes_without_a_size_name_both(tmp_path: Path) -> None:
    """A CSV folder and a photo folder decoded without a resize: the first image of another size is refused in one
    line naming it and the image whose size it differs from (one check, in ImageStack, for both)."""
    root, _, _ = _csv_folder(tmp_path, header=True, names=False)
    Image.open(root / "img" / "003.png").resize((32, 28)).save(root / "img" / "003.png")
    with pytest.raises(InputError) as e:
        load_csv_folder(root)
    _assert_one_line(e, f"{root / 'img' / '003.png'}: size (28, 32) differs from (28, 28) of {root / 'img' / '000.png'}",
                     "give a size to resize")
    assert load_csv_folder(root, size=28).train_images.shape == (14, 1, 28, 28)
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(IMAGENET.iterdir())[:2]:  # real photos of two sizes
        (photos / f.name).write_bytes(f.read_bytes())
    first, second = sorted(p.name for p in photos.iterdir())
    with pytest.raises(InputError) as e:
        load_image_folder(photos, channels=3, size=None)
    _assert_one_line(e, f"{photos / second}: size", f"of {photos / first}; give a size to resize")


def test_load_medical_dispatches(tmp_path: Path) -> None:
    assert load_medical(PNEUMONIA, size=32).image_size == 32
    root, _, _ = _csv_folder(tmp_path, header=True, names=True)
    assert load_medical(root).class_names == ("NORMAL", "PNEUMONIA")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(InputError) as e:
        load_medical(other)
    _assert_one_line(e, "notes.txt", "not a MedMNIST .npz")


# --- natural -------------------------------------------------------------------------------------

def test_imagenet_sample_is_seeded_and_sorted() -> None:
    images, keys, skipped = load_image_folder(IMAGENET, channels=3, size=32, limit=30, seed=0)
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    assert keys == sorted(keys) and len(set(keys)) == 30 and skipped.count == 0
    assert load_image_folder(IMAGENET, channels=3, size=32, limit=30, seed=0)[1] == keys
    assert load_image_folder(IMAGENET, channels=3, size=32, limit=30, seed=1)[1] != keys


def test_gray_from_real_gray_and_colour_photos(tmp_path: Path) -> None:
    files = sorted(IMAGENET.iterdir())
    gray = next(f for f in files if _mode(f) == "L")
    colour = sorted(FLICKR.iterdir())[0]
    for f in (gray, colour):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    images, keys, _ = load_image_folder(tmp_path, channels=1, size=24)
    assert images.shape == (2, 1, 24, 24) and keys == sorted([gray.name, colour.name])
    with Image.open(colour) as im:
        expected = np.array(im.convert("L").resize((24, 24), Image.Resampling.BILINEAR))
    assert torch.equal(images[keys.index(colour.name), 0], torch.from_numpy(expected))
    as_rgb = decode_image(gray.read_bytes(), channels=3, size=24)
    assert torch.equal(as_rgb[0], as_rgb[1]) and torch.equal(as_rgb[1], as_rgb[2])


def test_corrupt_files_are_skipped_and_reported(tmp_path: Path) -> None:
    good = sorted(IMAGENET.iterdir())[:4]
    for f in good:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    data = good[0].read_bytes()
    (tmp_path / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    images, keys, skipped = load_image_folder(tmp_path, channels=3, size=16)
    assert images.shape == (4, 3, 16, 16) and keys == sorted(f.name for f in good)
    assert torch.equal(images, torch.stack([decode_image(f.read_bytes(), channels=3, size=16) for f in good]))
    # written in place into room for the 7 files listed: the skipped three leave room unused, not a second copy
    assert images.untyped_storage().nbytes() == 7 * 3 * 16 * 16
    assert isinstance(skipped, SkipReport) and skipped.count == 3
    assert sorted(name for name, _ in skipped.skipped) == ["empty.jpg", "sub/noise.png", "truncated.JPEG"]
    assert all("cannot decode" in why and "\n" not in why for _, why in skipped.skipped)
    # PIL names the bytes by their object's repr; a memory address would make every run's metrics.json differ
    assert dict(skipped.skipped)["empty.jpg"] == "cannot decode image (UnidentifiedImageError: cannot identify image file <BytesIO>)"


def test_an_image_stack_is_torch_stack_written_in_place_and_grows_past_what_was_announced() -> None:
    photos = [decode_image(f.read_bytes(), channels=3, size=8) for f in sorted(IMAGENET.iterdir())[:5]]
    stack = ImageStack(3)
    for image in photos:  # two more than announced (a manifest that under-counts): grows rather than fails
        stack.add(image)
    assert stack.count == 5 and stack.shape == (3, 8, 8) and torch.equal(stack.tensor(), torch.stack(photos))
    too_many = ImageStack(10**9)  # 268 TB of 299 px photos: refused in one line before any is decoded
    with pytest.raises(InputError, match=r"^1000000000 images of 3x299x299 pixels are 2.68e\+05 GB in memory, more than"):
        too_many.add(torch.zeros((3, 299, 299), dtype=torch.uint8))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        list_images(tmp_path / "missing")
    _assert_one_line(e, f"{tmp_path / 'missing'}: not a folder of images (no such folder)")
    with pytest.raises(InputError) as e:
        list_images(tmp_path)
    _assert_one_line(e, str(tmp_path), "no image files")
    (tmp_path / "shard-000000.tar").write_bytes(b"")  # shards whose manifest.json is missing
    with pytest.raises(InputError) as e:
        list_images(tmp_path)
    _assert_one_line(e, f"{tmp_path}: no image files, but 1 .tar file(s); shards are read through the manifest.json")
    (tmp_path / "shard-000000.tar").unlink()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError) as e:
        load_image_folder(tmp_path, channels=1, size=8)
    _assert_one_line(e, "bad.jpg", "could be decoded")


def test_cmyk_jpeg(photo: Image.Image) -> None:
    buf = io.BytesIO()
    photo.convert("CMYK").save(buf, format="JPEG", quality=95)
    rgb = decode_image(buf.getvalue(), channels=3, size=None)
    assert rgb.shape == (3, 64, 96) and rgb.dtype == torch.uint8
    original = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float()
    assert (rgb.float() - original).abs().mean() < 8
    assert decode_image(buf.getvalue(), channels=1, size=20).shape == (1, 20, 20)


def test_sixteen_bit_png_scales_to_eight_bit(photo: Image.Image) -> None:
    eight = np.asarray(photo.convert("L")).copy()
    eight[0, 0], eight[0, 1] = 255, 0
    sixteen = eight.astype(np.uint16) * 257
    assert sixteen[0, 0] == 65535
    data = _png(Image.fromarray(sixteen))
    assert _mode(io.BytesIO(data)) in ("I;16", "I")
    gray = decode_image(data, channels=1, size=None)
    assert gray.shape == (1, 64, 96) and gray[0, 0, 0] == 255 and gray[0, 0, 1] == 0
    assert torch.equal(gray[0], torch.from_numpy(eight))
    assert decode_image(data, channels=3, size=None).shape == (3, 64, 96)


def test_palette_with_transparency_composites_on_white(photo: Image.Image) -> None:
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    index = np.asarray(pal)
    clear = int(index[10, 10])
    data = _png(pal, transparency=clear)
    rgb = decode_image(data, channels=3, size=None)
    mask = torch.from_numpy(index == clear)
    assert rgb.shape == (3, 64, 96) and bool((rgb[:, mask] == 255).all())
    opaque = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(rgb[:, ~mask], opaque[:, ~mask])
    assert decode_image(data, channels=1, size=None).shape == (1, 64, 96)


def test_rgba_png_drops_alpha_on_white(photo: Image.Image) -> None:
    alpha = np.full((64, 96), 255, np.uint8)
    alpha[:, :48] = 0
    rgba = photo.copy()
    rgba.putalpha(Image.fromarray(alpha))
    rgb = decode_image(_png(rgba), channels=3, size=None)
    assert bool((rgb[:, :, :48] == 255).all())
    assert torch.equal(rgb[:, :, 48:], torch.from_numpy(np.array(photo)).permute(2, 0, 1)[:, :, 48:])
    assert decode_image(_png(rgba.convert("LA")), channels=1, size=8).shape == (1, 8, 8)


def test_decompression_bomb_is_refused(photo: Image.Image) -> None:
    data = _png(photo.resize((3000, 3000)), compress_level=1)
    with pytest.raises(InputError) as e:
        decode_image(data, channels=3, size=32, max_pixels=1_000_000, name="huge.png")
    _assert_one_line(e, "huge.png", "3000x3000", "1000000")
    assert decode_image(data, channels=1, size=8).shape == (1, 8, 8)


def test_bad_channels_are_refused(photo: Image.Image) -> None:
    with pytest.raises(InputError, match="channels"):
        decode_image(_png(photo), channels=2, size=None)


@functools.cache
def _encoded_small(fmt: str) -> bytes:
    """A real ImageNet photo at 20 x 14, encoded as ``fmt``."""
    with Image.open(sorted(IMAGENET.iterdir())[1]) as im:
        small = im.convert("RGB").resize((20, 14))
    buf = io.BytesIO()
    small.save(buf, format=fmt)
    return buf.getvalue()


def _mode(path: Path | io.BytesIO) -> str:
    with Image.open(path) as im:
        return im.mode


def _decodes_or_input_error(data: bytes, channels: int, size: int | None) -> None:
    try:
        image = decode_image(data, channels=channels, size=size, max_pixels=4_000_000)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == channels
    if size is not None:
        assert image.shape[1:] == (size, size)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=2048), st.sampled_from([1, 3]), st.sampled_from([None, 8]))
def test_decode_random_bytes_fuzz(data: bytes, channels: int, size: int | None) -> None:
    _decodes_or_input_error(data, channels, size)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=16),
       st.integers(0, 10**6))
def test_decode_mutated_real_image_fuzz(fmt: str, at: int, patch: bytes, cut: int) -> None:
    data = bytearray(_encoded_small(fmt))
    at %= len(data)
    data[at : at + len(patch)] = patch
    _decodes_or_input_error(bytes(data[: len(data) - cut % 64]), 3, 8)

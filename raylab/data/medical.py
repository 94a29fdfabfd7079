"""Medical image datasets: MedMNIST .npz files and MedicalAI-UAP's CSV folders.

A medical set must be complete: any missing or unreadable file, bad key,
bad label or shape mismatch is an :class:`InputError` naming the file.
Images are kept as uint8 N x C x H x W, labels as int64 N.

A MedMNIST ``.npz`` named like one of MedMNIST's 2D datasets (``dermamnist.npz``,
or MedMNIST+ ``dermamnist_224.npz``) gets its class names from MedMNIST's own
metadata, ``medmnist_info.json`` (copied from the ``medmnist`` package's INFO).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, one_line
from .natural import decode_image
from .memory import ImageStack

_SPLITS = ("train", "val", "test")
_HEADER_WORDS = frozenset({"file", "filename", "file_name", "path", "filepath", "image", "image_path", "img",
                           "name", "label", "labels", "class", "target", "y"})
_RESIZE_CHUNK = 512
_MEDMNIST_INFO = "medmnist_info.json"
_PLUS_SIZE = re.compile(r"_\d+$")  # MedMNIST+ file names: dermamnist_64, dermamnist_128, dermamnist_224
# Kept for compatibility: raylab and its users have always called PneumoniaMNIST's classes NORMAL and PNEUMONIA
# (targets, results, reports); MedMNIST's INFO spells them "normal" and "pneumonia".
_COMPAT_NAMES = {"pneumoniamnist": ("NORMAL", "PNEUMONIA")}


@dataclass(frozen=True, eq=False)
class MedicalSet:
    """A labelled medical dataset split into train, val (possibly empty) and test."""

    name: str
    class_names: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (images are square for MedMNIST)."""
        return int(self.train_images.shape[2])

    def resized(self, size: int) -> MedicalSet:
        """All splits resized to ``size`` x ``size`` (bilinear, antialiased); self if already that size."""
        if size < 1:
            raise InputError(f"{self.name}: image size must be >= 1, got {size}")
        if all(tuple(x.shape[-2:]) == (size, size) for x in (self.train_images, self.val_images, self.test_images)):
            return self
        return dataclasses.replace(
            self,
            train_images=_resize(self.train_images, size),
            val_images=_resize(self.val_images, size),
            test_images=_resize(self.test_images, size),
        )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    n, c = images.shape[:2]
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for i in range(0, n, _RESIZE_CHUNK):
        chunk = images[i : i + _RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


@functools.cache
def _medmnist_table() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath(_MEDMNIST_INFO).read_text(encoding="utf-8")
    return json.loads(text)["datasets"]


def _medmnist_key(name: str | Path) -> str | None:
    stem = Path(name).stem if isinstance(name, Path) or str(name).lower().endswith(".npz") else str(name)
    key = _PLUS_SIZE.sub("", stem.strip().lower())
    return key if key in _medmnist_table() else None


def medmnist_info(name: str | Path) -> dict[str, Any] | None:
    """MedMNIST's INFO entry for a 2D dataset, or None if ``name`` is not one.

    ``name`` is a dataset name (``"dermamnist"``, ``"DermaMNIST"``) or a file (``Path("x/dermamnist_224.npz")``,
    ``"dermamnist_64.npz"``); case is ignored and a MedMNIST+ size suffix ``_<digits>`` is stripped. The entry
    (a copy) has ``python_class``, ``description``, ``task``, ``label`` (``{"0": name, ...}``), ``n_channels``,
    ``n_samples`` (per split) and ``license`` (the dataset's), as in the ``medmnist`` package.
    """
    key = _medmnist_key(name)
    return None if key is None else copy.deepcopy(_medmnist_table()[key])


def medmnist_class_names(name: str | Path) -> tuple[str, ...] | None:
    """A MedMNIST 2D dataset's class names in label-index order, or None if ``name`` is not one.

    Names are INFO's, except PneumoniaMNIST's, kept as raylab has always had them: ``("NORMAL", "PNEUMONIA")``.
    """
    key = _medmnist_key(name)
    if key is None:
        return None
    if key in _COMPAT_NAMES:
        return _COMPAT_NAMES[key]
    label = _medmnist_table()[key]["label"]
    return tuple(label[str(i)] for i in range(len(label)))


def _is_multi_label(info: dict[str, Any] | None) -> bool:
    return info is not None and "multi-label" in info["task"]


def _default_names(path: Path, labels: list[torch.Tensor]) -> tuple[str, ...]:
    names = medmnist_class_names(path)
    if names is not None:
        return names
    if "pneumoniamnist" in path.stem.lower():  # as before the table: e.g. pneumoniamnist_small.npz
        return _COMPAT_NAMES["pneumoniamnist"]
    return _numbered_names(path, labels)


def _numbered_names(where: Path, labels: list[torch.Tensor]) -> tuple[str, ...]:
    """``class0`` .. ``class{K-1}`` for labels that are bare indices, K the largest label + 1; InputError when K is
    more than the set has images (a label that is not a class index, which would make millions of classes)."""
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    images = sum(len(y) for y in labels)
    if top + 1 > images:
        raise InputError(f"{where}: label {top} would make {top + 1} classes for {images} images; labels must be "
                         "class indices 0..K-1")
    return tuple(f"class{i}" for i in range(top + 1))


def _check_labels(
    where: Path, labels: dict[str, torch.Tensor], class_names: tuple[str, ...], dataset: str | None = None
) -> None:
    """Every label indexes ``class_names``; ``dataset`` names where the names came from (a MedMNIST dataset)."""
    for split, y in labels.items():
        if len(y) and int(y.max()) >= len(class_names):
            if dataset is not None:
                raise InputError(
                    f"{where}: {split} label {int(y.max())} out of range for {dataset}'s {len(class_names)} classes "
                    f"{list(class_names)} (MedMNIST's classes, chosen by the file name); rename the file if it is not {dataset}"
                )
            raise InputError(
                f"{where}: {split} label {int(y.max())} out of range for {len(class_names)} classes {list(class_names)}"
            )


def _check_shapes(where: Path, images: dict[str, torch.Tensor]) -> None:
    ref = tuple(images["train"].shape[1:])
    for split, x in images.items():
        if len(x) and tuple(x.shape[1:]) != ref:
            raise InputError(f"{where}: {split} images are {tuple(x.shape[1:])} (C,H,W) but train images are {ref}")


def _npz_images(path: Path, key: str, arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise InputError(f"{path}: {key} has shape {arr.shape}; expected N x H x W or N x H x W x 3")
    if not (arr.shape[2] and arr.shape[3]):
        raise InputError(f"{path}: {key} holds images of {arr.shape[2]} x {arr.shape[3]} pixels")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{path}: {key} has dtype {arr.dtype}; expected uint8 pixels 0..255")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"{path}: {key} has values {arr.min()}..{arr.max()}; expected 0..255")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))


def _multi_label_refusal(path: Path, info: dict[str, Any]) -> str:
    return (f"{path}: {info['python_class']} is a {info['task']} task ({len(info['label'])} labels per image); "
            f"raylab handles single-label classification only")


def _npz_labels(path: Path, key: str, arr: np.ndarray, count: int, info: dict[str, Any] | None = None) -> torch.Tensor:
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        if _is_multi_label(info):
            raise InputError(f"{_multi_label_refusal(path, info)}; {key} has shape {arr.shape}")
        raise InputError(f"{path}: {key} has shape {arr.shape}; expected N or N x 1 (single-label)")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    )
    if not integral:
        raise InputError(f"{path}: {key} has dtype {arr.dtype} with non-integer values; expected class indices")
    if len(arr) != count:
        raise InputError(f"{path}: {key} has {len(arr)} labels but there are {count} images")
    if arr.size and arr.min() < 0:
        raise InputError(f"{path}: {key} has a negative label {arr.min()}")
    return torch.from_numpy(arr.reshape(-1).astype(np.int64))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise _not_npz(path, e) from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not a valid .npz file (a single .npy array, not an archive)")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise _not_npz(path, e) from e


def _not_npz(path: Path, e: Exception) -> InputError:
    """NumPy's refusal of pickled content advises loading it unsafely; raylab never does, so it says only what it is."""
    pickled = "allow_pickle" in str(e)
    why = "it holds pickled objects, which are never unpickled" if pickled else one_line(e, with_type=True)
    return InputError(f"{path}: not a valid .npz file ({why})")


def load_medmnist(path: str | Path, class_names: tuple[str, ...] | None = None, size: int | None = None) -> MedicalSet:
    """Load a MedMNIST .npz (train/test required, val optional) as a :class:`MedicalSet`.

    Without ``class_names``, a file named like a MedMNIST 2D dataset (see :func:`medmnist_info`) gets that
    dataset's names (:func:`medmnist_class_names`), any other file ``class0..classN-1``. A multi-label MedMNIST
    dataset (ChestMNIST) is refused: raylab handles single-label classification only.
    """
    path = Path(path)
    info = medmnist_info(path)
    arrays = _read_npz(path)
    images: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for split in _SPLITS:
        xk, yk = f"{split}_images", f"{split}_labels"
        optional = split == "val" and xk not in arrays and yk not in arrays
        if optional:
            continue
        for key in (xk, yk):
            if key not in arrays:
                raise InputError(f"{path}: missing key {key!r} (present: {', '.join(sorted(arrays)) or 'none'})")
        images[split] = _npz_images(path, xk, arrays[xk])
        labels[split] = _npz_labels(path, yk, arrays[yk], len(images[split]), info)
    for split in ("train", "test"):
        if not len(images[split]):
            raise InputError(f"{path}: the {split} split is empty")
    _check_shapes(path, images)
    if "val" not in images:
        images["val"] = images["train"].new_empty((0, *images["train"].shape[1:]))
        labels["val"] = torch.empty(0, dtype=torch.int64)
    if class_names is None and _is_multi_label(info):
        raise InputError(_multi_label_refusal(path, info))
    names = tuple(class_names) if class_names is not None else _default_names(path, list(labels.values()))
    _check_labels(path, labels, names, info["python_class"] if info is not None and class_names is None else None)
    data = MedicalSet(path.stem, names, images["train"], labels["train"], images["val"], labels["val"],
                      images["test"], labels["test"])
    return data if size is None else data.resized(size)


def _read_csv(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, file, label) rows of a ``file,label`` CSV; a header row is dropped."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{csv_path}: cannot read CSV ({' '.join(str(e).split())})") from e
    for n, row in rows:
        if len(row) < 2 or not row[0] or not row[1]:
            raise InputError(f"{csv_path}: line {n}: expected 'file,label', got {','.join(row)!r}")
    out = [(n, row[0], row[1]) for n, row in rows]
    if out and not _is_int(out[0][2]):
        first_file, first_label = out[0][1].lower(), out[0][2].lower()
        if first_file in _HEADER_WORDS or first_label in _HEADER_WORDS or any(_is_int(y) for _, _, y in out[1:]):
            out = out[1:]
    if not out:
        raise InputError(f"{csv_path}: no rows")
    return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _csv_labels(
    root: Path, rows: dict[str, list[tuple[int, str, str]]], class_names: tuple[str, ...] | None
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    raw = [y for split_rows in rows.values() for _, _, y in split_rows]
    if all(_is_int(y) for y in raw):
        labels = {s: torch.tensor([int(y) for _, _, y in r], dtype=torch.int64) for s, r in rows.items()}
        for split, y in labels.items():
            if len(y) and int(y.min()) < 0:
                raise InputError(f"{root / f'{split}_pre.csv'}: negative label {int(y.min())}")
        return labels, tuple(class_names) if class_names is not None else _numbered_names(root, list(labels.values()))
    names = tuple(class_names) if class_names is not None else tuple(sorted(set(raw)))
    index = {name: i for i, name in enumerate(names)}
    labels = {}
    for split, split_rows in rows.items():
        for n, _, y in split_rows:
            if y not in index:
                raise InputError(f"{root / f'{split}_pre.csv'}: line {n}: label {y!r} is not one of {list(names)}")
        labels[split] = torch.tensor([index[y] for _, _, y in split_rows], dtype=torch.int64)
    return labels, names


def _csv_images(root: Path, split: str, rows: list[tuple[int, str, str]], channels: int, size: int | None) -> torch.Tensor:
    csv_path = root / f"{split}_pre.csv"
    images = ImageStack(len(rows))
    for n, file, _ in rows:
        path = Path(file) if Path(file).is_absolute() else root / file
        if not path.is_file():
            raise InputError(f"{path}: does not exist (listed in {csv_path.name} line {n})")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({' '.join(str(e).split())})") from e
        image = decode_image(data, channels=channels, size=size, name=str(path))
        if images.shape is not None and tuple(image.shape) != images.shape:
            raise InputError(f"{path}: size {tuple(image.shape[1:])} differs from {images.shape[1:]}; give a size")
        images.add(image)
    return images.tensor()  # _read_csv refuses a CSV without rows


def load_csv_folder(
    root: str | Path, channels: int = 1, size: int | None = None, class_names: tuple[str, ...] | None = None
) -> MedicalSet:
    """Load MedicalAI-UAP's layout: ``train_pre.csv``, ``test_pre.csv`` (and optional ``val_pre.csv``) of ``file,label``.

    Files are relative to ``root`` (or absolute). Labels are class indices or
    class names (then ``class_names`` defaults to the sorted unique names).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    if channels not in (1, 3):
        raise InputError(f"{root}: channels must be 1 (gray) or 3 (RGB), got {channels}")
    rows: dict[str, list[tuple[int, str, str]]] = {}
    for split in _SPLITS:
        csv_path = root / f"{split}_pre.csv"
        if split == "val" and not csv_path.exists():
            continue
        if not csv_path.is_file():
            raise InputError(f"{csv_path}: does not exist")
        rows[split] = _read_csv(csv_path)
    labels, names = _csv_labels(root, rows, class_names)
    _check_labels(root, labels, names)
    images = {split: _csv_images(root, split, r, channels, size) for split, r in rows.items()}
    _check_shapes(root, images)
    if "val" not in images:
        images["val"] = images["train"].new_empty((0, *images["train"].shape[1:]))
        labels["val"] = torch.empty(0, dtype=torch.int64)
    return MedicalSet(root.name, names, images["train"], labels["train"], images["val"], labels["val"],
                      images["test"], labels["test"])


def load_medical(location: str | Path, size: int | None = None) -> MedicalSet:
    """A MedMNIST ``.npz`` or a folder with ``train_pre.csv``/``test_pre.csv``, by its look."""
    location = Path(location)
    if location.suffix.lower() == ".npz":
        return load_medmnist(location, size=size)
    if location.is_dir() and (location / "train_pre.csv").is_file():
        return load_csv_folder(location, size=size)
    raise InputError(f"{location}: not a MedMNIST .npz or a folder with train_pre.csv/test_pre.csv")

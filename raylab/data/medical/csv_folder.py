"""MedicalAI-UAP's CSV folders (:func:`load_csv_folder`): ``train_pre.csv``, ``test_pre.csv`` (and an optional
``val_pre.csv``) of ``file,label`` rows beside the images."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ...errors import InputError
from ..image import decode_image
from ..memory import ImageStack
from .dataset import SPLITS, MedicalSet, check_labels, check_shapes, numbered_names, with_empty_val

_HEADER_WORDS = frozenset({"file", "filename", "file_name", "path", "filepath", "image", "image_path", "img",
                           "name", "label", "labels", "class", "target", "y"})


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
        return labels, tuple(class_names) if class_names is not None else numbered_names(root, list(labels.values()))
    names = tuple(class_names) if class_names is not None else tuple(sorted(set(raw)))
    index = {name: i for i, name in enumerate(names)}
    labels = {}
    for split, split_rows in rows.items():
        for n, _, y in split_rows:
            if y not in index:
                raise InputError(f"{root / f'{split}_pre.csv'}: line {n}: label {y!r} is not one of {list(names)}")
        labels[split] = torch.tensor([index[y] for _, _, y in split_rows], dtype=torch.int64)
    return labels, names


def _path(root: Path, file: str) -> Path:
    return Path(file) if Path(file).is_absolute() else root / file


def _csv_images(root: Path, split: str, rows: list[tuple[int, str, str]], channels: int | None,
                size: int | None) -> torch.Tensor:
    """The split's images, each read once; ``channels=None``: as stored, gray until the first colour image (then
    the gray ones repeated to RGB), so a set of X-rays is never held as RGB."""
    csv_path = root / f"{split}_pre.csv"
    images = ImageStack(len(rows))
    for n, file, _ in rows:
        path = _path(root, file)
        if not path.is_file():
            raise InputError(f"{path}: does not exist (listed in {csv_path.name} line {n})")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({' '.join(str(e).split())})") from e
        image = decode_image(data, channels=channels, size=size, name=str(path))
        if images.shape is not None and image.shape[0] != images.shape[0]:  # gray and RGB, decoded as stored
            if image.shape[0] == 1:
                image = image.expand(3, -1, -1)
            else:
                images.widen()
        images.add(image, str(path))
    return images.tensor()  # _read_csv refuses a CSV without rows


def _gray(images: torch.Tensor) -> bool:
    """Whether every image of an RGB N x 3 x H x W stack is gray (its three channels equal)."""
    return torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def load_csv_folder(
    root: str | Path, channels: int | None = None, size: int | None = None, class_names: tuple[str, ...] | None = None
) -> MedicalSet:
    """Load MedicalAI-UAP's layout: ``train_pre.csv``, ``test_pre.csv`` (and optional ``val_pre.csv``) of ``file,label``.

    Files are relative to ``root`` (or absolute). Labels are class indices or
    class names (then ``class_names`` defaults to the sorted unique names).
    ``channels=None`` keeps the images' colour: each file is read once and
    decoded as stored, gray or RGB; the set is RGB when any file is colour
    (its gray files repeated), and one gray channel when every image is gray
    (R = G = B); so dermoscopy photos stay RGB and X-rays gray, and a set of
    X-rays is never held as RGB. 1 or 3 converts them.
    With ``size`` each image is resized as it is decoded (images of several
    sizes need one).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    if channels not in (None, 1, 3):
        raise InputError(f"{root}: channels must be 1 (gray) or 3 (RGB), got {channels}")
    rows: dict[str, list[tuple[int, str, str]]] = {}
    for split in SPLITS:
        csv_path = root / f"{split}_pre.csv"
        if split == "val" and not csv_path.exists():
            continue
        if not csv_path.is_file():
            raise InputError(f"{csv_path}: does not exist")
        rows[split] = _read_csv(csv_path)
    labels, names = _csv_labels(root, rows, class_names)
    check_labels(root, labels, names)
    images = {split: _csv_images(root, split, r, channels, size) for split, r in rows.items()}
    if channels is None and any(x.shape[1] == 3 for x in images.values()):
        images = {split: x.expand(-1, 3, -1, -1).clone() if x.shape[1] == 1 else x for split, x in images.items()}
        if all(_gray(x) for x in images.values()):  # RGB files of gray pictures
            images = {split: x[:, :1].clone() for split, x in images.items()}
    check_shapes(root, images)
    with_empty_val(images, labels)
    return MedicalSet(root.name, names, images["train"], labels["train"], images["val"], labels["val"],
                      images["test"], labels["test"])

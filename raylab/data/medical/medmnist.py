"""MedMNIST ``.npz`` files (:func:`load_medmnist`) and the class names of MedMNIST's 2D datasets.

A file named like one of MedMNIST's 2D datasets (``dermamnist.npz``, or MedMNIST+ ``dermamnist_224.npz``) gets its
class names from MedMNIST's own metadata, ``medmnist_info.json`` (copied from the ``medmnist`` package's INFO).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError, one_line
from .dataset import SPLITS, MedicalSet, check_labels, check_shapes, numbered_names, with_empty_val

_MEDMNIST_INFO = "medmnist_info.json"
_PLUS_SIZE = re.compile(r"_\d+$")  # MedMNIST+ file names: dermamnist_64, dermamnist_128, dermamnist_224
# Kept for compatibility: raylab and its users have always called PneumoniaMNIST's classes NORMAL and PNEUMONIA
# (targets, results, reports); MedMNIST's INFO spells them "normal" and "pneumonia".
_COMPAT_NAMES = {"pneumoniamnist": ("NORMAL", "PNEUMONIA")}


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
    return numbered_names(path, labels)


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
    for split in SPLITS:
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
    check_shapes(path, images)
    with_empty_val(images, labels)
    if class_names is None and _is_multi_label(info):
        raise InputError(_multi_label_refusal(path, info))
    names = tuple(class_names) if class_names is not None else _default_names(path, list(labels.values()))
    check_labels(path, labels, names, info["python_class"] if info is not None and class_names is None else None)
    data = MedicalSet(path.stem, names, images["train"], labels["train"], images["val"], labels["val"],
                      images["test"], labels["test"])
    return data if size is None else data.resized(size)

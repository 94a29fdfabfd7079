"""Medical image datasets: MedMNIST .npz files (:mod:`.medmnist`) and MedicalAI-UAP's CSV folders
(:mod:`.csv_folder`), each loaded as a :class:`MedicalSet` (:mod:`.dataset`).

A medical set must be complete: any missing or unreadable file, bad key,
bad label or shape mismatch is an :class:`InputError` naming the file.
Images are kept as uint8 N x C x H x W, labels as int64 N.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from .csv_folder import load_csv_folder
from .dataset import MedicalSet
from .medmnist import load_medmnist, medmnist_class_names, medmnist_info

__all__ = ["MedicalSet", "load_csv_folder", "load_medical", "load_medmnist", "medmnist_class_names", "medmnist_info"]


def load_medical(location: str | Path, size: int | None = None) -> MedicalSet:
    """A MedMNIST ``.npz`` or a folder with ``train_pre.csv``/``test_pre.csv``, by its look, resized to ``size`` (a
    CSV folder's images as each is decoded: they may differ in size). A CSV folder keeps its images' colour (gray
    only when every image is gray); a MedMNIST file has its own channels."""
    location = Path(location)
    if location.suffix.lower() == ".npz":
        return load_medmnist(location, size=size)
    if location.is_dir() and (location / "train_pre.csv").is_file():
        return load_csv_folder(location, size=size)
    raise InputError(f"{location}: not a MedMNIST .npz or a folder with train_pre.csv/test_pre.csv")

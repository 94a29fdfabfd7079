"""A medical set in memory (:class:`MedicalSet`) and the checks both of its file formats share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import InputError

SPLITS = ("train", "val", "test")
_RESIZE_CHUNK = 512


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

    def summary(self) -> str:
        """``"2 classes (NORMAL, PNEUMONIA), gray 28 px: 4708 train, 524 val, 624 test images"``."""
        return (f"{self.num_classes} classes ({', '.join(self.class_names)}), {'gray' if self.channels == 1 else 'RGB'} "
                f"{self.image_size} px: {len(self.train_images)} train, {len(self.val_images)} val, "
                f"{len(self.test_images)} test images")

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

    def with_channels(self, channels: int) -> MedicalSet:
        """All splits as ``channels`` (1 gray, 3 RGB) as PIL converts them: gray repeated to RGB (what an RGB model
        of the paper's X-rays and OCT saw), RGB to gray by ITU-R 601-2 luma; self if already so."""
        if channels not in (1, 3):
            raise InputError(f"{self.name}: channels must be 1 (gray) or 3 (RGB), got {channels}")
        if channels == self.channels:
            return self
        convert = _to_rgb if channels == 3 else _to_gray
        return dataclasses.replace(self, train_images=convert(self.train_images), val_images=convert(self.val_images),
                                   test_images=convert(self.test_images))


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1).contiguous()


def _to_gray(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: (19595 R + 38470 G + 7471 B + 32768) >> 16, exact in integers."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
    for i in range(0, len(images), _RESIZE_CHUNK):
        chunk = (images[i : i + _RESIZE_CHUNK].to(torch.int32) * weights).sum(1, keepdim=True)
        out[i : i + _RESIZE_CHUNK] = ((chunk + 32768) >> 16).to(torch.uint8)
    return out


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


def numbered_names(where: Path, labels: list[torch.Tensor]) -> tuple[str, ...]:
    """``class0`` .. ``class{K-1}`` for labels that are bare indices, K the largest label + 1; InputError when K is
    more than the set has images (a label that is not a class index, which would make millions of classes)."""
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    images = sum(len(y) for y in labels)
    if top + 1 > images:
        raise InputError(f"{where}: label {top} would make {top + 1} classes for {images} images; labels must be "
                         "class indices 0..K-1")
    return tuple(f"class{i}" for i in range(top + 1))


def check_labels(
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


def check_shapes(where: Path, images: dict[str, torch.Tensor]) -> None:
    """Every split's images have the training images' C x H x W."""
    ref = tuple(images["train"].shape[1:])
    for split, x in images.items():
        if len(x) and tuple(x.shape[1:]) != ref:
            raise InputError(f"{where}: {split} images are {tuple(x.shape[1:])} (C,H,W) but train images are {ref}")


def with_empty_val(images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> None:
    """An empty ``val`` split (images of the training images' shape) where the files have none."""
    if "val" not in images:
        images["val"] = images["train"].new_empty((0, *images["train"].shape[1:]))
        labels["val"] = torch.empty(0, dtype=torch.int64)

"""Shared fixtures: real data from ../shared/data, a small real model trained once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PNEUMONIA = DATA / "pneumoniamnist.npz"
IMAGENET = DATA / "imagenet-samples"
FLICKR = DATA / "flickr8k-samples"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(2)
    if not PNEUMONIA.exists():
        raise pytest.UsageError(f"real test data not found at {DATA} (clone the repo beside ../shared)")


def tiny_cnn(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A small conv net: enough to have a real decision boundary at 28x28, fast on CPU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="session")
def pneumonia() -> dict[str, torch.Tensor]:
    with np.load(PNEUMONIA) as z:
        return {
            "train_x": torch.from_numpy(z["train_images"]).unsqueeze(1),
            "train_y": torch.from_numpy(z["train_labels"].reshape(-1)).long(),
            "test_x": torch.from_numpy(z["test_images"]).unsqueeze(1),
            "test_y": torch.from_numpy(z["test_labels"].reshape(-1)).long(),
        }


@pytest.fixture(scope="session")
def trained_cnn(pneumonia: dict[str, torch.Tensor]) -> nn.Module:
    """tiny_cnn trained for one epoch on real PneumoniaMNIST (about 3 s on 2 cores)."""
    from raylab.core import to_model_space

    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = to_model_space(pneumonia["train_x"]), pneumonia["train_y"]
    g = torch.Generator().manual_seed(0)
    for idx in torch.randperm(len(x), generator=g).split(64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def natural_gray() -> torch.Tensor:
    """60 real ImageNet photos, gray, 28x28, uint8 N x 1 x 28 x 28."""
    from raylab.data.natural import load_image_folder

    images, _, _ = load_image_folder(IMAGENET, channels=1, size=28, limit=60, seed=0)
    return images

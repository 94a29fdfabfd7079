"""Training on real data: exemplar pretraining on photos, transfer learning vs random init on PneumoniaMNIST."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from raylab.cli import main
from raylab.data.medical import load_medmnist
from raylab.models import ModelSpec, load_classifier
from raylab.train import TrainConfig, _balanced_weights, accuracy, augment, finetune, pretrain_natural
from raylab.training_checkpoint import pretraining

from .conftest import IMAGENET, PNEUMONIA, pneumonia_subset, stopped_when_written


def test_balanced_sampling_evens_out_the_classes() -> None:
    labels = torch.tensor([0] * 100 + [1] * 300)  # PneumoniaMNIST is about 1:3
    draws = torch.multinomial(_balanced_weights(labels), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = labels[draws].float().mean().item()
    assert abs(share - 0.5) < 0.02


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    kw = dict(scale=(0.5, 1.0), shift=0.1, flip=True, jitter=0.4, gray_p=0.5)
    a = augment(x, torch.Generator().manual_seed(1), **kw)
    b = augment(x, torch.Generator().manual_seed(1), **kw)
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 127 / 128
    assert not torch.allclose(a, x)


def test_exemplar_pretraining_learns_to_tell_photos_apart(tmp_path) -> None:
    from raylab.data.natural import load_image_folder

    images, _, _ = load_image_folder(IMAGENET, channels=3, size=28, limit=32, seed=0)
    spec = ModelSpec("small_cnn", num_classes=32, image_size=28)
    losses: list[float] = []
    model = pretrain_natural(images, spec=spec, config=TrainConfig(epochs=15, batch_size=16, lr=0.05, balanced=False),
                             on_epoch=lambda row: losses.append(row["loss"]))
    assert len(losses) == 15 and losses[-1] < losses[0]
    # chance is 1/32; the exemplar task must be learned well above it on the unaugmented photos
    assert accuracy(model, images, torch.arange(32)) > 0.25


def test_finetune_reports_test_accuracy_and_regime() -> None:
    data = load_medmnist(PNEUMONIA)
    spec = ModelSpec("small_cnn", 2, in_channels=1, image_size=28, class_names=data.class_names)
    rows: list[dict] = []
    model, metrics = finetune(data, spec=spec, config=TrainConfig(epochs=1, batch_size=64), on_epoch=rows.append)
    assert metrics["from_scratch"] is True
    assert metrics["test_accuracy"] > 0.625  # above always-PNEUMONIA (390/624)
    assert rows and 0 < rows[0]["val_accuracy"] <= 1
    assert not model.training


def test_a_killed_training_resumes_to_the_weights_of_a_run_never_stopped(models, tmp_path, capsys) -> None:
    """`raylab train` SIGKILLed after its first epoch's checkpoint (<out>.partial), rerun: the weights of a run never
    stopped, to the bit (the optimizer's momentum, the schedule and the generators are in the checkpoint); a rerun
    with other settings is refused in one line first."""
    data = pneumonia_subset(tmp_path / "pneumonia-1000.npz", train=1000)  # epochs of a fraction of a second

    def train(out, *extra: str) -> list[str]:
        return ["train", "--data", str(data), "--backbone", str(models["backbone"]), "--arch", "small_cnn", "--image-size",
                "28", "--epochs", "4", "--batch-size", "32", "--checkpoint-seconds", "0", "--out", str(out), *extra]

    assert main(train(tmp_path / "whole.pt")) == 0
    assert not (tmp_path / "whole.pt.partial").exists()  # removed once the model is written
    out, partial = tmp_path / "stopped.pt", tmp_path / "stopped.pt.partial"
    code, _ = stopped_when_written(train(out), partial, signal.SIGKILL)
    assert code == -signal.SIGKILL and not out.exists(), "the training finished before it was killed"
    capsys.readouterr()
    assert main(train(out, "--lr", "0.1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint of a different training (lr=0.05 then, 0.1 now)" in err, err
    assert main(train(out)) == 0
    logged = capsys.readouterr().out
    assert f"resuming from {partial}: after epoch 1 of 4" in logged and logged.count("  epoch=") == 3  # epochs 2 to 4
    whole, resumed = load_classifier(tmp_path / "whole.pt"), load_classifier(out)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    reports = [json.loads(p.with_suffix(".json").read_text()) for p in (tmp_path / "whole.pt", out)]
    assert reports[0]["test_accuracy"] == reports[1]["test_accuracy"] and len(reports[1]["history"]) == 4
    assert not partial.exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_a_network_with_dropout_resumes_to_the_weights_of_a_run_never_stopped(tmp_path, device) -> None:
    """EfficientNet-Lite0 (dropout before its head) pretrained 2 epochs, and again resumed from its checkpoint file
    after epoch 1 with torch's generators elsewhere: the same weights, to the bit (on a GPU, cuDNN held
    deterministic). The dropout masks of epoch 2 come from the generator the checkpoint kept: the CPU's, or the
    CUDA device's, which a resume left where the process had it before."""
    from raylab.data.natural import load_image_folder

    images, _, _ = load_image_folder(IMAGENET, channels=3, size=32, limit=16, seed=0)
    spec = ModelSpec("efficientnet_lite0", num_classes=16, image_size=32)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, balanced=False, checkpoint_seconds=0, device=device)
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        checkpoint, _ = pretraining(tmp_path / "m.pt", config, spec, images, log=print)
        torch.manual_seed(0)
        whole = pretrain_natural(images, spec=spec, config=config,
                                 on_state=lambda s: s.epoch == 1 and checkpoint.save(s))
        _, state = pretraining(tmp_path / "m.pt", config, spec, images, log=print)
        assert state is not None and state.epoch == 1 and (state.cuda_rng is not None) == (device == "cuda")
        torch.manual_seed(1)  # every device's generator elsewhere: the checkpoint must bring them back
        resumed = pretrain_natural(images, spec=spec, config=config, resume=state)
    finally:
        torch.backends.cudnn.deterministic = deterministic
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))

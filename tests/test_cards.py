"""Models trained elsewhere: a state dict, a TorchScript file, a torch.export archive and an ONNX file of real trained
models, each with a model card, imported and audited like raylab's own; every bad card or file refused with one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from raylab.cards import import_model, read_card
from raylab.cli import main
from raylab.core import UAP, to_model_space, zeta_radius
from raylab.errors import InputError
from raylab.models import load_classifier, save_classifier

from .conftest import PNEUMONIA

# Both trained models take raylab's own model space, (x - 128) / 128: in card terms scale 255, mean 128, std 128.
GRAY = {"class_names": ["NORMAL", "PNEUMONIA"], "channels": 1, "image_size": 28, "scale": 255}


def _card(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(fields) if name.endswith(".json") else __import__("yaml").safe_dump(fields))
    return path


@pytest.fixture(scope="module")
def archives(trained_cnn, tmp_path_factory) -> dict[str, Path]:
    """The trained tiny conv net saved as TorchScript and as a torch.export program, as a user's pipeline would."""
    d = tmp_path_factory.mktemp("archives")
    example = torch.zeros(2, 1, 28, 28)
    torch.jit.save(torch.jit.trace(trained_cnn.eval(), example), d / "model.ts.pt")
    batch = torch.export.Dim("batch", min=1, max=4096)  # any batch size, as raylab's batches vary
    torch.export.save(torch.export.export(trained_cnn.eval(), (example,), dynamic_shapes=({0: batch},)), d / "model.pt2")
    torch.export.save(torch.export.export(trained_cnn.eval(), (example,)), d / "fixed-batch.pt2")
    torch.onnx.export(trained_cnn.eval(), (example,), d / "model.onnx", dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    card = dict(GRAY, net_channels=1, mean=[128], std=[128])
    return {"torchscript": d / "model.ts.pt", "torch.export": d / "model.pt2", "fixed": d / "fixed-batch.pt2",
            "onnx": d / "model.onnx", "card_onnx": _card(d, "onnx.yaml", format="onnx", **card),
            "card_ts": _card(d, "ts.yaml", format="torchscript", **card),
            "card_export": _card(d, "export.json", format="torch.export", **card)}


def test_a_state_dict_with_its_card_predicts_as_the_original(models, pneumonia, tmp_path) -> None:
    original = load_classifier(models["model"])
    torch.save(original.backbone.state_dict(), tmp_path / "weights.pth")  # a plain state dict, as torchvision writes
    card = _card(tmp_path, "card.yaml", format="state_dict", arch="small_cnn", mean=[128] * 3, std=[128] * 3, **GRAY)
    imported = import_model(card, tmp_path / "weights.pth")
    x = to_model_space(pneumonia["test_x"][:200])
    with torch.inference_mode():
        torch.testing.assert_close(imported(x), original(x), rtol=1e-5, atol=1e-5)


def test_archives_predict_as_the_trained_model_take_gradients_and_give_its_uap(trained_cnn, archives, pneumonia,
                                                                             natural_gray, tmp_path) -> None:
    x = to_model_space(pneumonia["test_x"][:200])
    with torch.inference_mode():
        want = trained_cnn(x)
    radius = zeta_radius(pneumonia["train_x"], zeta=0.08, p=2)
    attack = UAP(radius=radius, p=2, eps=0.02, max_passes=1, mode="batched", batch_size=20)
    reference = attack(trained_cnn, natural_gray, seed=5).rho
    for fmt, card in (("torchscript", archives["card_ts"]), ("torch.export", archives["card_export"]),
                      ("onnx", archives["card_onnx"])):
        model = import_model(card, archives[fmt])
        with torch.inference_mode():
            torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
        rho = attack(model, natural_gray, seed=5).rho
        assert rho.abs().sum() > 0
        torch.testing.assert_close(rho, reference, rtol=1e-4, atol=1e-5)
        back = load_classifier(save_classifier(model, tmp_path / f"{fmt}.pt"))  # the raylab checkpoint of the archive
        assert back.spec.arch == fmt and back.spec.class_names == ("NORMAL", "PNEUMONIA")
        with torch.inference_mode():
            torch.testing.assert_close(back(x), want, rtol=1e-5, atol=1e-5)


def test_import_model_then_audit_it_with_raylab_uap(archives, natural_dir, tmp_path, capsys) -> None:
    out = tmp_path / "imported.pt"
    assert main(["import-model", "--card", str(archives["card_ts"]), "--weights", str(archives["torchscript"]),
                 "--out", str(out)]) == 0
    assert "checked against" in capsys.readouterr().out
    assert main(["uap", "--model", str(out), "--data", str(PNEUMONIA), "--source", str(natural_dir), "--zeta", "0.08",
                 "--eps", "0.02", "--out", str(tmp_path / "uap")]) == 0
    m = json.loads((tmp_path / "uap" / "metrics.json").read_text())
    assert m["clean_accuracy"] > 0.6 and 0 <= m["fooling_rate"] <= 1 and m["source"]["images"] == 40


@pytest.mark.parametrize(("fields", "message"), [
    ({"format": "tflite"}, "field 'format' must be one of state_dict, torchscript, torch.export, onnx"),
    ({"format": "state_dict", "arch": "resnet1000"}, "field 'arch' must be one of"),
    ({"format": "state_dict", "arch": "resnet18", "image_size": 16}, "field 'image_size' 16 is below what resnet18 takes"),
    ({"format": "torchscript", "class_names": ["only"]}, "field 'class_names' must list 2 or more"),
    ({"format": "torchscript", "channels": 2}, "field 'channels' must be 1"),
    ({"format": "torchscript", "mean": [0.5, 0.5]}, "field 'mean' must hold 1 number"),
    ({"format": "torchscript", "std": [0]}, "field 'std' must be positive"),
    ({"format": "torchscript", "scale": 100}, "field 'scale' must be 1"),
    ({"format": "torchscript", "colour": "red"}, "unknown field 'colour'"),
])
def test_bad_cards_are_one_line_naming_the_field(tmp_path, fields, message) -> None:
    card = _card(tmp_path, "card.yaml", **{**GRAY, **fields})
    with pytest.raises(InputError, match=message):
        read_card(card)


def test_files_that_disagree_with_their_card_are_refused_before_compute(models, archives, tmp_path) -> None:
    state = load_classifier(models["model"]).backbone.state_dict()
    torch.save(state, tmp_path / "weights.pth")
    three = _card(tmp_path, "three.yaml", format="state_dict", arch="small_cnn", **{**GRAY, "class_names": ["a", "b", "c"]})
    with pytest.raises(InputError, match=r"lists 3 classes but the weights' head fc.weight has 2 outputs"):
        import_model(three, tmp_path / "weights.pth")
    other = _card(tmp_path, "other.yaml", format="state_dict", arch="resnet18", **{**GRAY, "image_size": 32})
    with pytest.raises(InputError, match=r"weights do not fit resnet18"):
        import_model(other, tmp_path / "weights.pth")
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"fc.weight": np.zeros(2)}))
    ok = _card(tmp_path, "ok.yaml", format="state_dict", arch="small_cnn", **GRAY)
    with pytest.raises(InputError, match=r"pickle.pth: cannot read weights"):
        import_model(ok, tmp_path / "pickle.pth")  # weights_only: never unpickled
    with pytest.raises(InputError, match=r"already a raylab checkpoint"):
        import_model(ok, models["model"])
    rgb = _card(tmp_path, "rgb.yaml", format="torchscript", **{**GRAY, "channels": 3, "mean": [0] * 3, "std": [1] * 3})
    with pytest.raises(InputError, match=r"the forward pass fails on an input of the card's shape \(1, 3, 28, 28\)"):
        import_model(rgb, archives["torchscript"])
    with pytest.raises(InputError, match=r"not a torch.export archive"):
        import_model(archives["card_export"], archives["torchscript"])
    with pytest.raises(InputError, match=r"fixed-batch.pt2: the forward pass fails on an input of the card's shape "
                                         r"\(1, 1, 28, 28\).*batch dimension"):
        import_model(archives["card_export"], archives["fixed"])


def test_an_onnx_operator_without_a_converter_is_one_line(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              tmp_path / "custom.onnx")
    card = _card(tmp_path, "card.yaml", format="onnx", net_channels=1, mean=[128], std=[128], **GRAY)
    with pytest.raises(InputError, match=r"custom.onnx: an ONNX operator has no PyTorch converter in onnx2torch \(.*FancyOp"):
        import_model(card, tmp_path / "custom.onnx")


def _library_net(arch: str) -> torch.nn.Module:
    """A network as its own library builds it, for a gray 2-class problem (random weights, seeded)."""
    torch.manual_seed(0)
    lib, _, name = arch.partition("/")
    if lib == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=2, in_chans=1).eval()
    from monai.networks import nets

    return getattr(nets, name)(spatial_dims=2, in_channels=1, out_channels=2).eval()


@pytest.mark.parametrize("arch", ["timm/test_resnet", "monai/DenseNet121"])
def test_timm_and_monai_state_dicts_with_their_cards_predict_as_their_library_does(arch, pneumonia, tmp_path) -> None:
    net = _library_net(arch)
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    card = _card(tmp_path, "card.yaml", format="state_dict", arch=arch, net_channels=1, mean=[0.5], std=[0.25],
                 **dict(GRAY, scale=1, image_size=64))
    imported = import_model(card, tmp_path / "weights.pth")  # the forward and input-gradient checks pass too
    x = pneumonia["test_x"][:16]
    x64 = torch.nn.functional.interpolate(x.float(), size=64, mode="bilinear", align_corners=False)
    with torch.inference_mode():
        want = net((x64 / 255 - 0.5) / 0.25)  # the card's preprocessing, done by hand
        got = imported(to_model_space(x64))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    save_classifier(imported, tmp_path / "imported.pt")  # a raylab checkpoint that every command audits
    again = load_classifier(tmp_path / "imported.pt")
    with torch.inference_mode():
        torch.testing.assert_close(again(to_model_space(x64)), got)
    bad = _card(tmp_path, "bad.yaml", format="state_dict", arch=arch, net_channels=1, mean=[0.5], std=[0.25],
                **dict(GRAY, scale=1, image_size=64, class_names=["A", "B", "C"]))
    with pytest.raises(InputError, match=r"weights do not fit|3 classes"):
        import_model(bad, tmp_path / "weights.pth")


def test_an_unknown_library_network_is_one_line(tmp_path) -> None:
    for arch, message in (("timm/no_such_net", "unknown timm model 'no_such_net'"),
                          ("monai/NoSuchNet", "unknown MONAI network 'NoSuchNet'")):
        card = _card(tmp_path, "card.yaml", format="state_dict", arch=arch, **dict(GRAY, scale=1))
        torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
        with pytest.raises(InputError, match=message):
            import_model(card, tmp_path / "w.pth")

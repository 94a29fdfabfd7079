"""Models trained elsewhere: a model card and the file it describes, made into a raylab classifier.

A **model card** is a small human-written YAML or JSON file beside the weights::

    format: state_dict        # state_dict, torchscript, torch.export, or onnx
    arch: resnet18            # state_dict only: a raylab architecture, timm/<model> or monai/<network> (DenseNet121)
    class_names: [NORMAL, PNEUMONIA]
    channels: 1               # the images it classifies: 1 (gray) or 3 (RGB)
    net_channels: 3           # what the network takes (a gray image is repeated to 3); default 3 (1 for gray archives
                              # and gray timm/MONAI networks; raylab's own architectures always take 3)
    image_size: 224
    scale: 1                  # the network's inputs are pixels / 255 * scale (1: [0, 1]; 255: [0, 255])
    mean: [0.485, 0.456, 0.406]   # per network channel, in the units of scale
    std: [0.229, 0.224, 0.225]

raylab audits in its own pixel space ((x − 128)/128, :mod:`raylab.core.pixels`), so that a UAP stays one tensor and
its budget ζ keeps the paper's meaning (Section 2.2); the card's preprocessing runs inside the wrapper, after the
perturbation. A state dict is read with ``weights_only=True``; TorchScript, torch.export and ONNX programs carry
their own code and unpickle no Python object (ONNX graphs are converted to torch modules by onnx2torch, so that
gradients with respect to the input exist; an operator it cannot convert is refused with one line). :func:`import_model` checks everything against the card before any compute —
class count, channels, input size, a forward pass on a dummy input of the card's shape, and gradients with respect
to the input (a UAP needs them) — and refuses with one line naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError, one_line
from .models import (
    ARCHITECTURES, ARCHIVES, HEADS, MIN_SIZE, ArchiveClassifier, Classifier, ModelSpec, _read, is_external,
    plain_state_dict,
)

FORMATS = ("state_dict", *ARCHIVES)


@dataclass(frozen=True)
class ModelCard:
    """What a model trained elsewhere takes and gives (see the module docstring for the file's fields)."""

    format: str
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    net_channels: int
    arch: str | None = None

    def spec(self) -> ModelSpec:
        """The classifier's spec: mean and std on [0, 1] images (the card's divided by its scale)."""
        return ModelSpec(arch=self.arch if self.format == "state_dict" else self.format,  # type: ignore[arg-type]
                         num_classes=len(self.class_names), in_channels=self.channels, image_size=self.image_size,
                         normalize="card", class_names=self.class_names, mean=tuple(m / self.scale for m in self.mean),
                         std=tuple(s / self.scale for s in self.std), net_channels=self.net_channels).validate()


def read_card(path: str | Path) -> ModelCard:
    """The card at ``path`` (``.yaml``/``.yml`` or ``.json``), checked field by field; InputError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model card not found: {path}")
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as e:
        raise InputError(f"{path}: not a readable model card ({one_line(e, 200)})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a model card is a mapping of fields, got {type(doc).__name__}")

    def field(name: str, default: Any = ..., kind: type | tuple[type, ...] = object) -> Any:
        if name not in doc:
            if default is ...:
                raise InputError(f"{path}: field {name!r} is missing")
            return default
        v = doc[name]
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise InputError(f"{path}: field {name!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
        return v

    unknown = sorted(set(doc) - {"format", "arch", "class_names", "channels", "net_channels", "image_size", "scale",
                                 "mean", "std"})
    if unknown:
        raise InputError(f"{path}: unknown field {unknown[0]!r}")
    fmt = field("format", kind=str)
    if fmt not in FORMATS:
        raise InputError(f"{path}: field 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    arch = field("arch", None, str)
    if fmt == "state_dict" and arch not in ARCHITECTURES and not is_external(arch or ""):
        raise InputError(f"{path}: field 'arch' must be one of {', '.join(ARCHITECTURES)}, timm/<model> or "
                         f"monai/<network> for a state dict, got {arch!r}")
    names = field("class_names", kind=list)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise InputError(f"{path}: field 'class_names' must list 2 or more distinct names, got {names!r}")
    channels = field("channels", kind=int)
    if channels not in (1, 3):
        raise InputError(f"{path}: field 'channels' must be 1 (gray) or 3 (RGB), got {channels}")
    fixed = fmt == "state_dict" and not is_external(arch or "")  # raylab's own architectures take 3 channels
    net_channels = field("net_channels", 3 if fixed or channels == 3 else 1, int)
    if net_channels not in (1, 3) or net_channels < channels or (fixed and net_channels != 3):
        raise InputError(f"{path}: field 'net_channels' must be 3{'' if fixed else ' or 1'} "
                         f"(and at least 'channels'), got {net_channels}")
    size = field("image_size", kind=int)
    low = MIN_SIZE.get(arch or "", 1)
    if size < low:
        raise InputError(f"{path}: field 'image_size' {size} is below what {arch or fmt} takes ({low} px)")
    scale = float(field("scale", 1, (int, float)))
    if scale not in (1.0, 255.0):
        raise InputError(f"{path}: field 'scale' must be 1 (inputs in [0, 1]) or 255 (inputs in [0, 255]), got {scale:g}")
    stats = {}
    for name, default in (("mean", [0.0]), ("std", [scale])):
        v = field(name, default * net_channels, list)
        if len(v) != net_channels or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise InputError(f"{path}: field {name!r} must hold {net_channels} number(s), one per network channel, got {v!r}")
        stats[name] = tuple(float(x) for x in v)
    if min(stats["std"]) <= 0:
        raise InputError(f"{path}: field 'std' must be positive, got {list(stats['std'])}")
    return ModelCard(fmt, tuple(names), channels, size, scale, stats["mean"], stats["std"], net_channels, arch)


def import_model(card_path: str | Path, weights: str | Path) -> Classifier | ArchiveClassifier:
    """The model ``weights`` (a state dict, or a TorchScript / torch.export archive) as the card describes it, checked
    against the card; save it with :func:`raylab.models.save_classifier` to audit it with any raylab command."""
    card, weights = read_card(card_path), Path(weights)
    spec = card.spec()
    if not weights.is_file():
        raise InputError(f"model file not found: {weights}")
    if card.format == "state_dict":
        model: Classifier | ArchiveClassifier = _from_state_dict(spec, weights, card_path)
    else:
        try:
            model = ArchiveClassifier(spec, weights.read_bytes())
        except InputError as e:
            raise InputError(f"{weights}: {e}") from None
        except Exception as e:
            raise InputError(f"{weights}: not a {card.format} archive ({one_line(e, 240)})") from None
    _check(model.eval(), spec, weights, card_path)
    return model


def _from_state_dict(spec: ModelSpec, weights: Path, card_path: str | Path) -> Classifier:
    obj = _read(weights)  # weights_only=True: anything but tensors and plain containers is refused
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("raylab."):
        raise InputError(f"{weights}: already a raylab checkpoint; use it as it is, without a card")
    state = plain_state_dict(obj, weights)
    if not state:
        raise InputError(f"{weights}: not a state dict of tensors (it is empty)")
    model = Classifier(spec)
    head = f"{HEADS.get(spec.arch, '')}.weight"
    if head in state and state[head].shape[0] != spec.num_classes:
        raise InputError(f"{card_path}: field 'class_names' lists {spec.num_classes} classes but the weights' head "
                         f"{head} has {state[head].shape[0]} outputs")
    try:
        model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{weights}: weights do not fit {spec.arch} ({one_line(e, 300)})") from None
    return model


def _check(model: nn.Module, spec: ModelSpec, weights: Path, card_path: str | Path) -> None:
    """Forward passes on dummy inputs of the card's shape (batches of 1 and 3: raylab's batches vary) give one logit
    per class, and a gradient reaches the input."""
    assert spec.image_size is not None
    for n in (1, 3):
        shape = (n, spec.in_channels, spec.image_size, spec.image_size)
        x = torch.zeros(shape, requires_grad=True)
        try:
            out = model(x)
        except Exception as e:
            fixed = "size()[0]" in str(e)  # torch.export's guard on a batch size fixed at export time
            hint = " (it was exported with a fixed batch dimension: export it with torch.export.Dim)" if fixed else ""
            raise InputError(f"{weights}: the forward pass fails on an input of the card's shape {shape} (channels, "
                             f"image_size of {card_path}, any batch size){hint}: {one_line(e, 200)}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, spec.num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"{weights}: gives {got} for an input of shape {shape}, but {card_path} lists "
                             f"{spec.num_classes} classes")
        out.sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            raise InputError(f"{weights}: no finite gradient with respect to the input (a UAP needs one)")

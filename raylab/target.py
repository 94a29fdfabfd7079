"""The classifier under audit and its medical data, loaded and checked against each other.

Both the single-machine audit (:mod:`raylab.run`) and the distributed
engine (:mod:`raylab.engine`) start here, so a model and a dataset that do
not fit are refused the same way, before any compute: one line naming the
file and what disagrees. The UAP's budget is fixed here too: Section 2.2's ζ
is a ratio of the mean Lp norm of the medical *training* images, so the
radius belongs to the (model, dataset) pair, not to the UAP's source.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .config import require_device
from .core import Criterion, Norm, Targeted, Untargeted, parse_norm, zeta_radius
from .data.medical import MedicalSet, load_medical
from .errors import InputError
from .fingerprint import tensor_bytes
from .models import Classifier, load_classifier
from .store import filesystem


def resolve_target(target: str | int | None, class_names: tuple[str, ...]) -> int | None:
    """A target class given by name (any case) or index -> its index; None for a non-targeted UAP."""
    if target is None:
        return None
    text = str(target).strip()
    if text in class_names:
        return class_names.index(text)
    folded = [n.casefold() for n in class_names]
    if text.casefold() in folded and folded.count(text.casefold()) == 1:
        return folded.index(text.casefold())
    if text.isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    sep = " | " if any("," in n for n in class_names) else ", "  # MedMNIST has names like "normal, benign"
    raise InputError(f"target class {text!r} does not exist; classes are {sep.join(class_names)} (or 0..{len(class_names) - 1})")


def medical_digest(medical: MedicalSet) -> str:
    """sha256 of a medical set's images, labels and class names: what a resumed run must find unchanged.

    The UAP's radius comes from the training images and its rates from the test images (Section 2.2-2.3), so a
    checkpoint made against one dataset must not be resumed against another, whatever its file is called.
    """
    h = hashlib.sha256("\n".join(medical.class_names).encode())
    for t in (medical.train_images, medical.train_labels, medical.val_images, medical.val_labels,
              medical.test_images, medical.test_labels):
        h.update(str(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))  # the bytes tobytes() copied, read in place: the same digest, no copy of the set
    return h.hexdigest()


@dataclass(frozen=True)
class Target:
    """The classifier under audit, its medical dataset (resized to the model's input) and the UAP's budget."""

    model: Classifier
    medical: MedicalSet
    class_names: tuple[str, ...]
    #: The target class of a targeted UAP (an index into ``class_names``), None for a non-targeted one.
    target: int | None
    p: Norm
    zeta: float
    #: ζ as a radius in model space: ``zeta * mean ||x_train||_p / 128`` (Section 2.2).
    radius: float

    @property
    def criterion(self) -> Criterion:
        return Untargeted() if self.target is None else Targeted(self.target)

    @property
    def target_name(self) -> str | None:
        return None if self.target is None else self.class_names[self.target]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        spec = self.model.spec
        assert spec.image_size is not None
        return (spec.in_channels, spec.image_size, spec.image_size)

    def with_budget(self, *, zeta: float, p: Norm, target: str | int | None) -> "Target":
        """The same model and data with another ζ, p or target class (no reloading)."""
        radius = self.radius if (zeta, p) == (self.zeta, self.p) else zeta_radius(self.medical.train_images, zeta=zeta, p=p)
        return dataclasses.replace(self, zeta=zeta, p=p, radius=radius, target=resolve_target(target, self.class_names))


def fit(model: Classifier, medical: MedicalSet, *, where: str | Path, name: str) -> MedicalSet:
    """``medical`` as the model's input: its size, and its channels (gray repeated for an RGB model, RGB to gray for
    a gray one, as PIL converts them), after checking that its classes fit the model."""
    spec = model.spec
    if medical.channels not in (1, 3) or spec.in_channels not in (1, 3):
        raise InputError(f"{where}: images have {medical.channels} channel(s) but model {name} expects {spec.in_channels}")
    if medical.num_classes != spec.num_classes:
        raise InputError(f"{where}: {medical.num_classes} classes but model {name} has {spec.num_classes} outputs")
    assert spec.image_size is not None
    return medical.with_channels(spec.in_channels).resized(spec.image_size)


def read_model(location: str | Path) -> bytes:
    """A checkpoint's bytes from a local path or an fsspec URL (``s3://``, ``file://``); InputError naming it."""
    text = str(location)
    try:
        if "://" in text:
            fs, path = filesystem(text)
            with fs.open(path, "rb") as f:
                return f.read()
        with open(text, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read model weights {text} ({e.strerror or e})") from None


def load_target(model: str | Path | bytes, medical_path: str | Path, *, target: str | int | None, zeta: float,
                p: Norm | str, device: str = "cpu", model_name: str | None = None) -> Target:
    """Load the model and the medical set and check that they fit; InputError naming the first bad one.

    ``model`` is a checkpoint path, an fsspec URL or a checkpoint's bytes; ``model_name`` names it in messages;
    ``p`` may be text ("2", "inf"), as a script's option gives it.
    """
    try:
        p = parse_norm(p)
    except ValueError as e:
        raise InputError(str(e)) from None
    require_device(device)
    name = model_name or str(model)
    if not isinstance(model, bytes) and "://" in str(model):
        model = read_model(model)
    classifier = load_classifier(model, map_location=device, name=name)
    medical = fit(classifier, load_medical(medical_path, size=classifier.spec.image_size), where=medical_path, name=name)
    class_names = classifier.spec.class_names or medical.class_names
    radius = zeta_radius(medical.train_images, zeta=zeta, p=p)
    if not radius > 0:  # ζ is a share of the images' mean norm (Section 2.2): all-black images leave no budget
        raise InputError(f"{medical_path}: every training image is all zero, so zeta={zeta:g} of their mean "
                         f"L{p} norm is a radius of 0; the UAP budget needs real images")
    return Target(classifier, medical, class_names, resolve_target(target, class_names), p, zeta, radius)

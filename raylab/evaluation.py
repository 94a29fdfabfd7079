"""A UAP evaluated on the medical test set beside the random control (Section 2.2-2.3): one function, one value.

:func:`evaluate` is the only place that builds the random control (a random
vector on the Lp sphere of the same radius, seeded ``seed + 1``) and turns
predicted labels into the paper's numbers. Where the labels come from is the
caller's business: ``predict`` runs in this process (``raylab uap``, the
reproduction) or on the engine's Ray workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .core import Norm, confusion_matrix, fooling_rate, label_composition, random_sphere, success_rate

#: Labels of ``images`` under ``images + rho`` (``rho=None``: the clean labels).
Predict = Callable[[Tensor, Tensor | None], Tensor]
#: A model whose clean accuracy is within this of always answering the test set's most frequent class gets a warning:
#: its fooling rates mean little (a constant answer is not fooled by anything).
BASELINE_MARGIN = 0.02
#: The random control is drawn with the run's seed plus this, so a ``source=random`` UAP (drawn with the seed
#: itself) and its control are two different vectors.
CONTROL_SEED_OFFSET = 1


def by_class(values: Tensor, names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values)}


def random_uap(shape: tuple[int, ...], *, radius: float, p: Norm, seed: int) -> Tensor:
    """The random "UAP" of the control source: uniform on the Lp sphere of ``radius`` (Section 2.2)."""
    return random_sphere(shape, radius=radius, p=p, generator=torch.Generator().manual_seed(seed))


def random_control(shape: tuple[int, ...], *, radius: float, p: Norm, seed: int) -> Tensor:
    """The random control every UAP is compared with: :func:`random_uap` with ``seed + 1``."""
    return random_uap(shape, radius=radius, p=p, seed=seed + CONTROL_SEED_OFFSET)


@dataclass(frozen=True)
class Rates:
    """R_f, R_s of every class and the row-normalized confusion matrix (clean x adversarial) of one perturbation."""

    fooling_rate: float
    success_rate: dict[str, float]
    confusion_matrix: list[list[float]]

    @staticmethod
    def of(clean: Tensor, adv: Tensor, class_names: tuple[str, ...]) -> "Rates":
        return Rates(fooling_rate(clean, adv), {name: success_rate(adv, i) for i, name in enumerate(class_names)},
                     confusion_matrix(clean, adv, num_classes=len(class_names)).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"fooling_rate": self.fooling_rate, "success_rate": dict(self.success_rate),
                "confusion_matrix": self.confusion_matrix}


@dataclass(frozen=True, kw_only=True)
class ModelCheck:
    """The model on the clean test set, checked before any UAP is read: accuracy beside a constant answer's."""

    class_names: tuple[str, ...]
    test_images: int
    clean_accuracy: float
    #: Mean of the per-class recalls, and the accuracy of always answering the test set's most frequent class.
    balanced_accuracy: float
    majority_accuracy: float
    class_accuracy: dict[str, float]
    clean_label_composition: dict[str, float]

    @staticmethod
    def of(clean: Tensor, test_labels: Tensor, class_names: tuple[str, ...]) -> "ModelCheck":
        """The check of clean labels ``clean`` against the true ``test_labels``."""
        k = len(class_names)
        counts = torch.bincount(test_labels, minlength=k).float()
        hits = torch.bincount(test_labels[clean == test_labels], minlength=k).float()
        recall = torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan)
        return ModelCheck(
            class_names=tuple(class_names), test_images=len(clean),
            clean_accuracy=float((clean == test_labels).float().mean()),
            balanced_accuracy=float(recall[counts > 0].mean()), majority_accuracy=float(counts.max() / counts.sum()),
            class_accuracy={n: float(r) for n, r in zip(class_names, recall) if not torch.isnan(r)},
            clean_label_composition=by_class(label_composition(clean, num_classes=k), tuple(class_names)))

    def baseline_warning(self) -> str | None:
        """A warning when the model is not clearly better than a constant answer (checked before its UAP is read)."""
        if self.clean_accuracy > self.majority_accuracy + BASELINE_MARGIN:
            return None
        return (f"warning: clean accuracy {self.clean_accuracy:.3f} is not above always answering the most frequent "
                f"class ({self.majority_accuracy:.3f}; balanced accuracy {self.balanced_accuracy:.3f}): this model's "
                "fooling rates mean little")

    def fields(self) -> dict[str, Any]:
        """The check's own fields (of an Evaluation too), as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelCheck)}

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (lists and dicts)."""
        return {k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v for k, v in self.fields().items()}


@dataclass(frozen=True, kw_only=True)
class Evaluation(ModelCheck):
    """What a UAP does to the medical test set, beside the random control at the same radius."""

    target: str | None
    uap: Rates
    random: Rates
    #: Clean and adversarial labels of the test images (for the examples figure; not serialized), and the labels under
    #: the random control (which callers may reuse for the next UAP at the same radius, p and seed).
    clean: Tensor
    adversarial: Tensor
    controlled: Tensor

    @property
    def headline(self) -> float:
        """The number an audit reports: R_f, or R_s of the target for a targeted UAP."""
        return self.uap.fooling_rate if self.target is None else self.uap.success_rate[self.target]

    @property
    def random_headline(self) -> float:
        return self.random.fooling_rate if self.target is None else self.random.success_rate[self.target]

    def rates_line(self, *, rho_l2: float | None = None) -> str:
        """The rates as a run prints them: R_f beside its random control (with ρ's L2 norm when given), or a target's
        R_s beside its control and its share of the clean predictions."""
        if self.target is None:
            norm = "" if rho_l2 is None else f"||rho||_2 = {rho_l2:.3g}, "
            return (f"fooling rate R_f = {self.uap.fooling_rate:.3f}   random control R_f = {self.random.fooling_rate:.3f}"
                    f"   ({norm}clean accuracy {self.clean_accuracy:.3f}, {self.test_images} test images)")
        t = self.target
        return (f"success rate R_s({t}) = {self.uap.success_rate[t]:.3f}   random control R_s = "
                f"{self.random.success_rate[t]:.3f}   baseline (clean) = {self.clean_label_composition[t]:.3f}")

    def headline_text(self) -> str:
        return f"R_f={self.headline:.2f}" if self.target is None else f"R_s({self.target})={self.headline:.2f}"

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json fields (documented in the README under "One record")."""
        return {"target": self.target, **ModelCheck.to_dict(self), **self.uap.to_dict(), "random": self.random.to_dict()}


def evaluate(predict: Predict, rho: Tensor, *, test_images: Tensor, test_labels: Tensor, class_names: tuple[str, ...],
             target: int | None, radius: float, p: Norm, seed: int, clean: Tensor | None = None,
             controlled: Tensor | None = None) -> Evaluation:
    """R_f, R_s and confusion matrices of ``rho`` and of the random control on the test set.

    ``clean`` (C(x) of the test images) and ``controlled`` (C(x + the random control)) may be passed in: neither
    depends on ρ, so callers that evaluate many UAPs on one model compute each once (the control once per radius,
    p and seed).
    """
    clean = predict(test_images, None) if clean is None else clean
    if controlled is None:
        controlled = predict(test_images, random_control(tuple(rho.shape), radius=radius, p=p, seed=seed))
    adv = predict(test_images, rho)
    return Evaluation(**ModelCheck.of(clean, test_labels, class_names).fields(),
                      target=None if target is None else class_names[target],
                      uap=Rates.of(clean, adv, class_names), random=Rates.of(clean, controlled, class_names), clean=clean,
                      adversarial=adv, controlled=controlled)

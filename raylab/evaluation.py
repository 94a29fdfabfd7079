"""The evaluation record of a UAP on a medical test set (Section 2.3), from predicted labels.

Where the labels come from (one process, or Ray workers) is the caller's
business; this module only turns them into the paper's numbers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import confusion_matrix, fooling_rate, label_composition, success_rate


def by_class(values: Tensor, names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values)}


def scores(clean: Tensor, adv: Tensor, class_names: tuple[str, ...]) -> dict[str, Any]:
    """R_f, R_s for every class, and the row-normalized confusion matrix (clean x adversarial)."""
    return {
        "fooling_rate": fooling_rate(clean, adv),
        "success_rate": {name: success_rate(adv, i) for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(clean, adv, num_classes=len(class_names)).tolist(),
    }


def report(clean: Tensor, adv: Tensor, adv_random: Tensor, truth: Tensor, class_names: tuple[str, ...],
           target: int | None) -> dict[str, Any]:
    """The metrics of a UAP beside the random control at the same radius."""
    return {
        "target": None if target is None else class_names[target],
        "class_names": list(class_names),
        "test_images": len(clean),
        "clean_accuracy": float((clean == truth).float().mean()),
        "clean_label_composition": by_class(label_composition(clean, num_classes=len(class_names)), class_names),
        **scores(clean, adv, class_names),
        "random": scores(clean, adv_random, class_names),
    }


def headline(metrics: dict[str, Any]) -> str:
    """The number a plot title shows: R_f, or R_s of the target for a targeted UAP."""
    target = metrics["target"]
    return f"R_f={metrics['fooling_rate']:.2f}" if target is None else f"R_s({target})={metrics['success_rate'][target]:.2f}"

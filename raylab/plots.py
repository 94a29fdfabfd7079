"""Pictures people would rather look at than read: the UAP (Figure 4), clean vs
adversarial examples with predicted labels (Figure 2), and the row-normalized
confusion matrix (Figure 5)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .core.pixels import VALID_RANGE, to_model_space, to_unit_range
from .figures import plt, png_bytes


def _hwc(image: Tensor) -> np.ndarray:
    """C×H×W -> H×W (gray) or H×W×3 for imshow."""
    a = image.detach().cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def scaled_uap(rho: Tensor) -> Tensor:
    """The UAP scaled to 0..1 for display, as in the paper's Figure 4: (ρ - min) / (max - min)."""
    lo, hi = rho.min(), rho.max()
    return (rho - lo) / (hi - lo) if hi > lo else torch.zeros_like(rho)


def uap_png(rho: Tensor, *, title: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(_hwc(scaled_uap(rho)), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def examples_png(images: Tensor, rho: Tensor, clean_pred: Tensor, adv_pred: Tensor, class_names: tuple[str, ...]) -> bytes:
    """Clean images (top row) and x+ρ (bottom row), each titled with its predicted label (Figure 2)."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.6), squeeze=False)
    clean = to_unit_range(to_model_space(images)).clamp(0, 1)
    adv = to_unit_range((to_model_space(images) + rho).clamp(*VALID_RANGE)).clamp(0, 1)
    for i in range(n):
        for row, (img, pred) in enumerate(((clean[i], clean_pred[i]), (adv[i], adv_pred[i]))):
            ax = axes[row][i]
            ax.imshow(_hwc(img), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            changed = row == 1 and int(pred) != int(clean_pred[i])
            ax.set_title(class_names[int(pred)], fontsize=8, color="red" if changed else "black")
    axes[0][0].text(-0.15, 0.5, "clean", transform=axes[0][0].transAxes, rotation=90, va="center", ha="right")
    axes[1][0].text(-0.15, 0.5, "+ UAP", transform=axes[1][0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return png_bytes(fig)


def fooled_examples_png(images: Tensor, rho: Tensor, clean_pred: Tensor, adv_pred: Tensor,
                        class_names: tuple[str, ...], n: int) -> bytes:
    """:func:`examples_png` of ``n`` test images, those the UAP flips first."""
    order = torch.cat([(clean_pred != adv_pred).nonzero().flatten(), (clean_pred == adv_pred).nonzero().flatten()])[:n]
    return examples_png(images[order], rho, clean_pred[order], adv_pred[order], class_names)


def draw_confusion(ax, m: np.ndarray, class_names, *, fontsize: float | None = None) -> None:
    """A row-normalized confusion matrix on ``ax``: rows = the model's label of the clean image, columns = its label
    under the UAP (the paper's Figure 5; R_f counts the mass off the diagonal)."""
    k = len(class_names)
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="white" if m[i, j] > 0.5 else "black",
                    fontsize=fontsize)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), class_names, fontsize=fontsize)
    ax.set_xlabel("prediction with UAP", fontsize=fontsize)
    ax.set_ylabel("clean prediction", fontsize=fontsize)


def confusion_png(matrix: Tensor, class_names: tuple[str, ...], *, title: str = "") -> bytes:
    """Row-normalized confusion matrix: rows = clean prediction, columns = prediction under the UAP (Figure 5)."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 * k + 2.2, 1.0 * k + 1.6))
    draw_confusion(ax, matrix.detach().cpu().numpy(), class_names)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)

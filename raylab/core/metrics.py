"""Predictions and the paper's metrics (Section 2.3).

- fooling rate ``R_f = |X|^-1 Σ I(C(x) != C(x+ρ))``
- targeted success rate ``R_s = |X|^-1 Σ I(C(x+ρ) = y)`` (images already in
  class y count, as in the authors' code: R_s has a baseline without a UAP)
- the row-normalized confusion matrix (clean prediction × adversarial prediction)
- the composition of predicted labels over an image set (Tables S1-S3)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fgsm import autocast
from .pixels import as_model_input


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_labels(
    model: nn.Module,
    images: Tensor,
    *,
    rho: Tensor | None = None,
    batch_size: int = 256,
    clip: tuple[float, float] | None = None,
    amp: bool = False,
) -> Tensor:
    """Argmax labels of ``images`` (uint8 raw or float model space), optionally under ``x + ρ``."""
    device = model_device(model)
    rho_d = None if rho is None else rho.to(device)
    out = []
    for chunk in images.split(batch_size):
        x = as_model_input(chunk.to(device))
        if rho_d is not None:
            x = x + rho_d
        if clip is not None:
            x = x.clamp(*clip)
        with torch.no_grad(), autocast(device, amp):  # labels only: no autograd graph to keep
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def fooling_rate(clean: Tensor, adversarial: Tensor) -> float:
    """R_f: the share of images whose adversarial label differs from the clean label."""
    return float((clean != adversarial).float().mean()) if len(clean) else 0.0


def success_rate(adversarial: Tensor, target: int) -> float:
    """R_s: the share of all images labelled ``target`` under x+ρ."""
    return float((adversarial == target).float().mean()) if len(adversarial) else 0.0


def confusion_matrix(clean: Tensor, adversarial: Tensor, *, num_classes: int, normalize: bool = True) -> Tensor:
    """Rows: clean prediction; columns: adversarial prediction. Row-normalized by default.

    Row normalization is "to account for imbalanced datasets" (Section 2.3); a class
    never predicted on clean images gets a row of zeros.
    """
    counts = torch.bincount(clean * num_classes + adversarial, minlength=num_classes**2)
    counts = counts.reshape(num_classes, num_classes).to(torch.float64)
    if not normalize:
        return counts
    rows = counts.sum(1, keepdim=True)
    return torch.where(rows > 0, counts / rows.clamp_min(1), torch.zeros_like(counts))


def label_composition(labels: Tensor, *, num_classes: int) -> Tensor:
    """The share of each predicted label over an image set (Tables S1-S3)."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return counts / max(len(labels), 1)

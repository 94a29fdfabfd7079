"""The fast gradient sign method (Goodfellow et al. 2015), the UAP's inner step.

Paper, Section 2.2: ρ is updated "by additively obtaining an adversarial perturbation for an
input image x ... through the fast gradient sign method with the attack
strength parameter ε". The authors passed only ``eps`` to ART's FGSM, so the
step is the L∞ sign step ``ε·sign(∇)`` for both p=2 and p=∞ UAPs (the outer p
governs the projection alone); ``step_norm="l2"`` gives FGSM's L2 variant
``ε·∇/||∇||_2`` instead.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StepNorm = Literal["sign", "l2"]
STEP_NORMS: tuple[StepNorm, ...] = ("sign", "l2")


def direction(grad: Tensor, step_norm: StepNorm) -> Tensor:
    """The per-image FGSM direction of a batch of input gradients.

    NaN gradient entries count as 0 (as in ART); an all-zero gradient gives a zero step.
    """
    grad = grad.nan_to_num(nan=0.0)
    if step_norm == "sign":
        return grad.sign()
    norms = grad.reshape(grad.shape[0], -1).norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.full_like(norms, float("inf")))
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def autocast(device: torch.device, enabled: bool) -> ContextManager[object]:
    """Mixed precision for forward passes (bfloat16 on CPU, float16 on CUDA), off by default.

    Without autocast's cache of cast weights, which a CUDA graph may not hold (PyTorch's CUDA-graph notes); it saves
    nothing here anyway: one forward uses each weight once, and its backward reuses what autograd saved.
    """
    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def input_gradient(model: nn.Module, x: Tensor, labels: Tensor, *, amp: bool = False) -> tuple[Tensor, Tensor]:
    """One forward with autograd on ``x``: returns ``(logits, d sum(CE) / dx)``.

    Only the input gradient is computed (no weight gradients), and the loss is
    summed so that every image's gradient is its own.
    """
    # Works under no_grad/inference_mode callers too: inference tensors are copied out first.
    x = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)
    labels = labels.clone() if labels.is_inference() else labels
    with torch.enable_grad(), autocast(x.device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return logits.detach(), grad


def fgsm_step(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    eps: float,
    targeted: bool = False,
    step_norm: StepNorm = "sign",
    amp: bool = False,
) -> Tensor:
    """The FGSM step ``s`` for a batch (``x + s`` is the adversarial example).

    Non-targeted: ascend the loss of ``labels``; targeted: descend the loss of
    the target ``labels``.
    """
    _, grad = input_gradient(model, x, labels, amp=amp)
    return (-eps if targeted else eps) * direction(grad, step_norm)

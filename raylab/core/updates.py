"""The update rules of the paper's UAP algorithm for a batch of images against one ρ (Section 2.2).

For an image whose label under x+ρ still counts as not fooled (see :mod:`raylab.core.criteria`), take one FGSM
step of size ε from x+ρ; keep it if it is accepted. ``batch_update`` applies that rule to a batch of B images against
one ρ and returns the sum of accepted steps; the caller sets ``ρ <- Proj(ρ + Σ accepted steps)``. With B=1 this *is*
the faithful per-image rule of ART's ``UniversalPerturbation`` (``x_adv - x = ρ + s``). The batched update is the
unit of work the Ray engine distributes.

Cost per batch: one forward with autograd on x+ρ (labels and input gradients together, no weight gradients) and one
acceptance forward for the active images; clean labels are computed by the caller, once per image.

``masked_update`` is the same rule with static shapes and no host sync, for GPUs (cuDNN autotuning, CUDA graphs,
``torch.compile``): the acceptance forward runs on the whole batch with the inactive images' steps masked to zero,
and the counts stay on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .criteria import Criterion
from .fgsm import StepNorm, autocast, direction, input_gradient
from .pixels import as_model_input


@dataclass(frozen=True)
class StepStats:
    """Counts from one batch: images seen, attacked (active), steps accepted."""

    images: int = 0
    active: int = 0
    accepted: int = 0

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(self.images + other.images, self.active + other.active, self.accepted + other.accepted)

    @property
    def fooled_on_visit(self) -> int:
        """Images that already counted as fooled when visited."""
        return self.images - self.active


@dataclass(frozen=True)
class BatchUpdate:
    """The result of :func:`batch_update`: the sum of accepted steps, and counts."""

    step: Tensor
    stats: StepStats


def _attack_forward(model: nn.Module, x: Tensor, clean: Tensor, rho: Tensor, *, criterion: Criterion,
                    clip: tuple[float, float] | None, amp: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused forward of both update rules: labels under x+ρ and the FGSM gradient in one pass (an inactive
    image's gradient is computed but never used). Returns x in model space, x+ρ, the gradient, the labels under
    x+ρ and which images are still to attack."""
    x = as_model_input(x)
    x_pert = x + rho
    if clip is not None:
        x_pert = x_pert.clamp(*clip)
    logits, grad = input_gradient(model, x_pert, criterion.loss_labels(clean), amp=amp)
    current = logits.argmax(1)
    return x, x_pert, grad, current, criterion.active(current, clean)


def batch_update(
    model: nn.Module,
    x: Tensor,
    clean: Tensor,
    rho: Tensor,
    *,
    eps: float,
    criterion: Criterion,
    step_norm: StepNorm = "sign",
    clip: tuple[float, float] | None = None,
    amp: bool = False,
) -> BatchUpdate:
    """The batched UAP update for a batch ``x`` against one ρ (all on the model's device).

    Args:
        x: images, uint8 raw or float model space, B×C×H×W.
        clean: their clean labels, B.
        rho: the current perturbation, C×H×W.
        clip: the valid range to clip x+ρ and x_adv to; None (the authors'
            setting: their classifier had no clip values) leaves them unclipped.
    """
    x, x_pert, grad, current, active = _attack_forward(model, x, clean, rho, criterion=criterion, clip=clip, amp=amp)
    n_active = int(active.sum())
    if n_active == 0:
        return BatchUpdate(torch.zeros_like(rho), StepStats(len(x), 0, 0))
    step = criterion.sign * eps * direction(grad[active], step_norm)
    x_adv = x_pert[active] + step
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
        step = x_adv - x[active] - rho  # the step that was really taken: x_adv - x - ρ
    with torch.inference_mode(), autocast(x.device, amp):
        new = model(x_adv).argmax(1)
    accepted = criterion.accepted(new, current[active])
    n_accepted = int(accepted.sum())
    total = step[accepted].sum(0) if n_accepted else torch.zeros_like(rho)
    return BatchUpdate(total, StepStats(len(x), n_active, n_accepted))


@dataclass(frozen=True)
class MaskedUpdate:
    """The result of :func:`masked_update`, all on the device: the sum of accepted steps, the counts
    ``[images, active, accepted]`` (read them once per pass, not per batch) and each image's decision."""

    step: Tensor
    counts: Tensor
    accepted: Tensor


def masked_update(
    model: nn.Module,
    x: Tensor,
    clean: Tensor,
    rho: Tensor,
    *,
    eps: float,
    criterion: Criterion,
    step_norm: StepNorm = "sign",
    clip: tuple[float, float] | None = None,
    amp: bool = False,
) -> MaskedUpdate:
    """:func:`batch_update` with static shapes and the decisions on the device (:class:`MaskedUpdate`).

    Every tensor has the batch's shape whatever the number of active images: the acceptance forward runs on all B
    images (an inactive one's step is zero, and its decision is masked out), so a GPU sees one shape per batch
    size. The same decisions as :func:`batch_update` (tests/test_gpu_path.py), at the cost of forwarding the inactive
    images once more.
    """
    x, x_pert, grad, current, active = _attack_forward(model, x, clean, rho, criterion=criterion, clip=clip, amp=amp)
    mask = active.view(-1, *([1] * (x.dim() - 1))).to(grad.dtype)
    step = criterion.sign * eps * direction(grad, step_norm) * mask
    x_adv = x_pert + step
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
        step = (x_adv - x - rho) * mask
    with torch.inference_mode(), autocast(x.device, amp):
        new = model(x_adv).argmax(1)
    accepted = active & criterion.accepted(new, current)
    total = (step * accepted.view_as(mask).to(step.dtype)).sum(0)
    counts = torch.stack([torch.full_like(active, True, dtype=torch.long).sum(), active.sum(), accepted.sum()])
    return MaskedUpdate(total, counts, accepted)

"""Stochastic-gradient UAPs: gradient ascent on ρ itself (Shafahi et al., "Universal adversarial training",
AAAI 2020; the PyTorch code practitioners use, kenny-co/sgd-uap-torch).

The paper's method (:mod:`.uap`) takes an FGSM step per image and keeps it only when it flips that image. This
method instead treats ρ as the parameter of a loss over the images and follows its stochastic gradient, the way
a network is trained: for each batch X_b of the (shuffled) inputs,

    g = ∇_ρ Σ_{x ∈ X_b} ℓ(x + ρ)
    ρ <- Proj(ρ + s · lr_t · d(g))

with ℓ = min(CE(f(x+ρ), C(x)), β) and s = +1 for a non-targeted UAP (ascend the clamped loss of the clean label:
the clamp β stops images that are already fooled from dominating the gradient), ℓ = CE(f(x+ρ), y) and s = -1
for a targeted one (descend the loss of the target y); d(g) = g / ||g||_2 for p = 2 and sign(g) for p = ∞; the
step lr_t = lr · radius · (1 - t/T) decays linearly over the T batches of the run (``schedule="constant"``
keeps it at lr · radius). Projection and criteria are the paper's (:mod:`.norms`, :mod:`.criteria`).

A batch costs one forward and one backward to the input (no acceptance forward), plus the clean labels once per
image for a non-targeted UAP; the batch gradient is a sum over images, so per-image gradients computed in
parallel reduce into one shared step by summation (what the Ray engine does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .criteria import Criterion, Untargeted
from .fgsm import autocast
from .metrics import predict_labels
from .norms import Norm, project_lp
from .pixels import as_model_input
from .transfer import device_batches
from .uap import PassState, UAPResult, begin, check_attack
from .updates import StepStats

Schedule = Literal["linear", "constant"]
SCHEDULES: tuple[Schedule, ...] = ("linear", "constant")


def batch_gradient(model: nn.Module, x: Tensor, clean: Tensor, rho: Tensor, *, criterion: Criterion, loss_clamp: float,
                   clip: tuple[float, float] | None = None, amp: bool = False) -> tuple[Tensor, Tensor]:
    """``∇_ρ Σ_i ℓ(x_i + ρ)`` of one batch, and how many of its images were still active (not yet fooled) when
    visited, as a device tensor: nothing is read on the host, so a GPU's stream never waits for it.

    ``clean`` are the clean labels (any labels of the right length for a targeted UAP: they are not used).
    """
    # Works under no_grad/inference_mode callers and with labels from predict_labels (inference tensors): copies.
    x, labels = as_model_input(x), criterion.loss_labels(clean)
    x, labels = (t.clone() if t.is_inference() else t for t in (x, labels))
    r = rho.detach().clone().requires_grad_(True)
    with torch.enable_grad(), autocast(x.device, amp):
        xp = x + r
        if clip is not None:
            xp = xp.clamp(*clip)
        logits = model(xp)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        if isinstance(criterion, Untargeted):
            loss = loss.clamp(max=loss_clamp)
        total = loss.sum()
    (grad,) = torch.autograd.grad(total, r)
    active = criterion.active(logits.detach().argmax(1), clean)
    return grad.nan_to_num(nan=0.0), active.sum()


def step_size(t: int, total: int, *, lr: float, radius: float, schedule: Schedule) -> float:
    """lr_t of step ``t`` of ``total``: ``lr · radius``, decaying linearly to 0 over the run by default."""
    base = lr * radius
    return base if schedule == "constant" else base * (1 - t / max(1, total))


def sgd_step(rho: Tensor, grad: Tensor, *, size: float, p: Norm, radius: float, sign: float) -> Tensor:
    """``Proj(ρ + s · size · d(g))``: a normalized-gradient step for p = 2, a sign step for p = ∞."""
    if p == "inf":
        direction = grad.sign()
    else:
        norm = grad.norm()  # a zero gradient gives a zero step, without reading the norm on the host
        direction = grad / torch.where(norm > 0, norm, torch.ones_like(norm)) * (norm > 0)
    return project_lp(rho + sign * size * direction, radius=radius, p=p)


@dataclass(frozen=True)
class SGDUAP:
    """A stochastic-gradient UAP attack: one object, one call, like :class:`raylab.core.UAP`.

    ``SGDUAP(radius=r, p=2)(model, images)`` returns a :class:`~raylab.core.uap.UAPResult`.

    Args:
        radius: the Lp budget in model space (see :func:`raylab.core.norms.zeta_radius`).
        p: 2 or "inf".
        lr: the first step as a fraction of ``radius`` (1.0: a step of the whole budget, decaying to 0).
        max_passes: epochs over the input images.
        batch_size: images per step.
        loss_clamp: β, the cap of each image's cross-entropy in the non-targeted loss.
        schedule: "linear" (decay to 0 over the run) or "constant".
        clip: clip x+ρ to this range (None = unclipped, as the paper's method runs by default).
        amp: autocast the forward pass.
        eval_batch_size: batch size of the clean labels.
        prefetch: on a GPU, copy batch k+1 on a side stream while batch k computes (as :class:`raylab.core.UAP`).
    """

    radius: float
    p: Norm
    lr: float = 1.0
    max_passes: int = 10
    batch_size: int = 32
    loss_clamp: float = 10.0
    schedule: Schedule = "linear"
    clip: tuple[float, float] | None = None
    amp: bool = False
    eval_batch_size: int = 256
    prefetch: bool = True

    def __post_init__(self) -> None:
        check_attack(radius=self.radius, p=self.p, max_passes=self.max_passes, batch_size=self.batch_size)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.loss_clamp > 0:
            raise ValueError(f"loss_clamp must be > 0, got {self.loss_clamp}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def steps(self, n: int) -> int:
        """T, the steps a run over ``n`` images makes: ``max_passes · ceil(n / batch_size)``."""
        return self.max_passes * math.ceil(n / self.batch_size)

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        *,
        criterion: Criterion = Untargeted(),
        rho: Tensor | None = None,
        clean_labels: Tensor | None = None,
        seed: int = 0,
        on_batch: Callable[[StepStats, Tensor], None] | None = None,
        first_step: int = 0,
        total_steps: int | None = None,
        resume: PassState | None = None,
        on_pass: Callable[[PassState], None] | None = None,
    ) -> UAPResult:
        """Run the attack on ``images`` (N×C×H×W, uint8 raw or float model space).

        Args:
            rho: the perturbation carried in from an earlier chunk of a stream (default zero).
            clean_labels: C(x) of each image, if already known (not needed for a targeted UAP).
            seed: the image order of pass k is ``random.Random(seed).sample``'s k-th permutation (as in :class:`UAP`).
            on_batch: called after every step with its counts and the new ρ.
            first_step, total_steps: where this call stands in a longer run's schedule (a stream of chunks);
                by default the run is this call alone.
            resume, on_pass: as :class:`UAP`'s, ``on_pass`` called after every epoch.
        """
        order_rng, start, rho = begin(model, images, rho=rho, resume=resume, seed=seed, max_passes=self.max_passes)
        device = rho.device
        if clean_labels is None:
            clean_labels = (predict_labels(model, images, batch_size=self.eval_batch_size, amp=self.amp)
                            if isinstance(criterion, Untargeted) else torch.zeros(len(images), dtype=torch.long))
        clean_labels = clean_labels.to(device)
        n = len(images)
        total = self.steps(n) + first_step if total_steps is None else total_steps
        t = first_step + start.passes * math.ceil(n / self.batch_size)
        stats, history = start.stats, list(start.history)
        for k in range(start.passes, self.max_passes):
            order = torch.tensor(order_rng.sample(range(n), n))
            active_total = torch.zeros((), dtype=torch.long, device=device)
            for idx, x in device_batches(images, order, self.batch_size, device=device, overlap=self.prefetch):
                grad, active = batch_gradient(model, x, clean_labels[idx], rho,
                                              criterion=criterion, loss_clamp=self.loss_clamp, clip=self.clip, amp=self.amp)
                size = step_size(t, total, lr=self.lr, radius=self.radius, schedule=self.schedule)
                rho = sgd_step(rho, grad, size=size, p=self.p, radius=self.radius, sign=criterion.sign)
                t += 1
                active_total += active
                if on_batch is not None:  # a callback reads the counts: one sync per batch
                    on_batch(StepStats(len(idx), int(active), len(idx)), rho)  # every image's gradient goes into ρ
            pass_stats = StepStats(n, int(active_total), n)
            stats = stats + pass_stats
            history.append({"pass": k + 1, "active": pass_stats.active, "accepted": pass_stats.accepted,
                            "input_score": float("nan")})
            if on_pass is not None:
                on_pass(PassState(k + 1, rho.detach().cpu().clone(), stats, tuple(history), k + 1 == self.max_passes))
        return UAPResult(rho.cpu(), self.max_passes, stats, None, False, history)

"""Universal adversarial perturbations by the simple iterative algorithm (Section 2.2).

Start from ρ (zero, or carried in from the previous chunk of a stream); pass
over the input images in a seeded random order; for an image whose label under
x+ρ still counts as not fooled (see :mod:`raylab.core.criteria`), take one FGSM
step of size ε from x+ρ; if the step is accepted, ``ρ <- Proj(x_adv - x)``.
Repeat for ``i_max`` passes or until the score on the inputs reaches 1 - δ.

``batch_update`` applies that rule to a batch of B images against one ρ and
returns the sum of accepted steps; ``ρ <- Proj(ρ + Σ accepted steps)``. With
B=1 this *is* the faithful per-image rule of ART's ``UniversalPerturbation``
(``x_adv - x = ρ + s``), which is how ``mode="faithful"`` runs. The batched
update is the unit of work the Ray engine distributes.

Cost per batch: one forward with autograd on x+ρ (labels and input gradients
together, no weight gradients) and one acceptance forward for the active
images; clean labels are computed once per image, in batches (and not at all
for a targeted UAP, whose rules never read them).

``masked_update`` is the same rule with static shapes and no host sync, for
GPUs (cuDNN autotuning, CUDA graphs, ``torch.compile``): the acceptance
forward runs on the whole batch with the inactive images' steps masked to
zero, and the counts stay on the device. ``UAP(static_shapes=True)`` runs on
it and projects after every batch (the projection of a feasible ρ is ρ);
``UAP(cuda_graphs=True)`` replays that step from a CUDA graph
(:mod:`raylab.core.graphs`), for the launch-bound faithful mode on a GPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from .criteria import Criterion, Untargeted
from .fgsm import StepNorm, autocast, direction, input_gradient
from .graphs import CapturedStep
from .metrics import model_device, predict_labels
from .norms import Norm, project_lp
from .pixels import as_model_input

Mode = Literal["faithful", "batched"]


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


def check_attack(*, radius: float, p: object, max_passes: int, batch_size: int) -> None:
    """The checks every UAP attack makes of its budget and its loop (ValueError naming the bad value)."""
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if p not in (2, "inf"):
        raise ValueError(f"p must be 2 or 'inf', got {p!r}")
    if max_passes < 1:
        raise ValueError(f"max_passes must be >= 1, got {max_passes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def initial_rho(model: nn.Module, images: Tensor, rho: Tensor | None) -> Tensor:
    """ρ to start from (zero, or carried in from an earlier chunk), on the model's device, after checking that the
    model is in eval mode and ``rho`` fits the images."""
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first (batch norm would use batch statistics)")
    if len(images) == 0:
        raise ValueError("no input images")
    rho = torch.zeros(images.shape[1:], dtype=torch.float32) if rho is None else rho.to(torch.float32)
    if rho.shape != images.shape[1:]:
        raise ValueError(f"rho has shape {tuple(rho.shape)} but images are {tuple(images.shape[1:])}")
    return rho.to(model_device(model))


@dataclass(frozen=True)
class UAPResult:
    """A UAP and how it was made."""

    rho: Tensor
    passes: int
    stats: StepStats
    #: Score (R_f or R_s) on the input images under the final ρ, when computed (δ > 0).
    input_score: float | None
    #: True when the δ stop fired before i_max passes.
    converged: bool
    history: list[dict[str, float]] = field(default_factory=list)


#: Updates of ρ in a run below which each method is weak (benchmarks/batch_size.py, docs/bench/cpu-batch-size.json: 1,000
#: photos, L2 ζ = 4 %, 3 seeds, the exemplar-pretrained ResNet-18). The paper's method: one update, R_f 0.061 on every
#: seed, where 2 to 3,000 updates (1 or 3 passes) gave 0.17-0.22. The stochastic-gradient one: 1 to 3 steps 0.04-0.08,
#: where 6 to 96 steps gave 0.31-0.36.
MIN_UPDATES = {"paper": 2, "sgd": 6}
_MEASURED = {"paper": "R_f 0.06 with one update against 0.17-0.22 with 2 or more",
             "sgd": "R_f 0.04-0.08 with 1-3 steps against 0.31-0.36 with 6 or more"}


def weak_regime(images: int, batch: int, *, passes: int = 1, method: str = "paper") -> str | None:
    """A warning when ``passes`` over ``images`` at an effective ``batch`` (workers x batch in the engine) update ρ
    fewer than :data:`MIN_UPDATES` times for ``method``; None otherwise."""
    need = MIN_UPDATES[method]
    updates = passes * -(-images // batch)
    if updates >= need:
        return None
    largest = max(1, images // -(-need // passes))  # the largest batch that makes `need` updates in `passes` passes
    return (f"warning: {images} images x {passes} pass(es) at an effective batch of {batch} make {updates} update(s) of "
            f"rho; fewer than {need} is the weak regime of the {method} method ({_MEASURED[method]}, see the README's "
            f"batch-size study): use a batch of at most {largest} (fewer workers or a smaller --batch-size), more "
            "passes, or a longer stream")


@dataclass(frozen=True)
class UAP:
    """A UAP attack: one object, one call (after foolbox's attacks).

    ``UAP(radius=r, p=2, eps=0.0005)(model, images)`` returns a :class:`UAPResult`.

    Args:
        radius: the Lp budget in model space (see :func:`raylab.core.norms.zeta_radius`).
        p: 2 or "inf": the norm of the projection.
        eps: the FGSM step size ε.
        max_passes: i_max, passes over the input images (the paper used 1).
        delta: stop once the score on the inputs reaches 1 - δ. The authors'
            loop never updated its fooling rate, so every run made i_max
            passes; δ=0 reproduces that (it stops only when every input is
            fooled, after which no further pass could change ρ).
        mode: "faithful" (per image, ART's semantics) or "batched".
        batch_size: B for the batched mode.
        step_norm: "sign" (the authors' L∞ FGSM step) or "l2".
        clip: clip x+ρ to this range (None = the authors' unclipped setting).
        amp: autocast forward passes (GPU); off keeps results exact.
        eval_batch_size: batch size for clean labels and the δ check.
        static_shapes: run on :func:`masked_update` (one shape per batch size, no host sync per batch; for GPUs),
            the same decisions.
        cuda_graphs: the static-shape step (update, projection, counts) captured once as a CUDA graph and replayed
            for every batch of its shape (:class:`raylab.core.graphs.CapturedStep`); implies ``static_shapes``.
            CUDA only.
    """

    radius: float
    p: Norm
    eps: float
    max_passes: int = 1
    delta: float = 0.0
    mode: Mode = "faithful"
    batch_size: int = 32
    step_norm: StepNorm = "sign"
    clip: tuple[float, float] | None = None
    amp: bool = False
    eval_batch_size: int = 256
    static_shapes: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        check_attack(radius=self.radius, p=self.p, max_passes=self.max_passes, batch_size=self.batch_size)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0 <= self.delta < 1:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        if self.mode not in ("faithful", "batched"):
            raise ValueError(f"mode must be 'faithful' or 'batched', got {self.mode!r}")
        if self.step_norm not in ("sign", "l2"):
            raise ValueError(f"step_norm must be 'sign' or 'l2', got {self.step_norm!r}")

    @property
    def effective_batch_size(self) -> int:
        return 1 if self.mode == "faithful" else self.batch_size

    def project(self, rho: Tensor) -> Tensor:
        return project_lp(rho, radius=self.radius, p=self.p)

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
    ) -> UAPResult:
        """Run the attack on ``images`` (N×C×H×W, uint8 raw or float model space).

        Args:
            rho: the perturbation carried in from the previous chunk (default zero).
            clean_labels: C(x) for each image, if already known.
            seed: the image order of pass k is ``random.Random(seed).sample``'s
                k-th permutation, the draw ART makes with the global ``random``.
            on_batch: called after every batch with its stats and the current ρ.
        """
        rho = initial_rho(model, images, rho)
        device = rho.device
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, got {device}")
        if clean_labels is None and isinstance(criterion, Untargeted):
            clean_labels = predict_labels(model, images, batch_size=self.eval_batch_size, amp=self.amp)
        elif clean_labels is None:  # a targeted UAP's rules never read the clean labels: no forward for them
            clean_labels = torch.zeros(len(images), dtype=torch.long)
        clean_labels = clean_labels.to(device)
        if device.type == "cuda" and not images.is_pinned():
            images = images.pin_memory()  # the copies below overlap the compute (non_blocking)
        kw = dict(eps=self.eps, criterion=criterion, step_norm=self.step_norm, clip=self.clip, amp=self.amp)
        counts = torch.zeros(3, dtype=torch.long, device=device)  # a static pass's [images, active, accepted]
        static = self.static_shapes or self.cuda_graphs
        if static:
            rho = rho.clone()  # updated in place from here on: the memory a CUDA graph replays on

            def step(x: Tensor, clean: Tensor) -> Tensor:
                masked = masked_update(model, x, clean, rho, **kw)
                rho.copy_(self.project(rho + masked.step))
                counts.add_(masked.counts)
                return masked.counts

            static_step = CapturedStep(step, (rho, counts)) if self.cuda_graphs else step
        order_rng = random.Random(seed)
        total, history, score, converged = StepStats(), [], None, False
        n, b = len(images), self.effective_batch_size
        passes = 0
        while passes < self.max_passes:
            order = torch.tensor(order_rng.sample(range(n), n))
            pass_stats = StepStats()
            counts.zero_()
            for idx in order.split(b):
                x = images[idx].to(device, non_blocking=True)
                if static:
                    batch_counts = static_step(x, clean_labels[idx])
                    if on_batch is not None:  # a callback reads the counts: one sync per batch
                        on_batch(StepStats(*batch_counts.tolist()), rho)
                    continue
                upd = batch_update(model, x, clean_labels[idx], rho, **kw)
                if upd.stats.accepted:
                    rho = self.project(rho + upd.step)
                pass_stats = pass_stats + upd.stats
                if on_batch is not None:
                    on_batch(upd.stats, rho)
            pass_stats = pass_stats + StepStats(*counts.tolist())
            passes += 1
            total = total + pass_stats
            score = self._input_score(model, images, clean_labels, rho, criterion) if self.delta > 0 else None
            history.append({"pass": passes, "active": pass_stats.active, "accepted": pass_stats.accepted,
                            "input_score": float("nan") if score is None else score})
            if (score is not None and score >= 1 - self.delta) or pass_stats.active == 0:
                converged = passes < self.max_passes
                break
        return UAPResult(rho.cpu(), passes, total, score, converged, history)

    def _input_score(self, model: nn.Module, images: Tensor, clean: Tensor, rho: Tensor, criterion: Criterion) -> float:
        adv = predict_labels(model, images, rho=rho, batch_size=self.eval_batch_size, clip=self.clip, amp=self.amp)
        return criterion.score(clean.cpu(), adv)

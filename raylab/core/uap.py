"""Universal adversarial perturbations by the simple iterative algorithm (Section 2.2).

Start from ρ (zero, or carried in from the previous chunk of a stream); pass
over the input images in a seeded random order; for an image whose label under
x+ρ still counts as not fooled, take one FGSM step of size ε from x+ρ; if the
step is accepted, ``ρ <- Proj(x_adv - x)``. Repeat for ``i_max`` passes or
until the score on the inputs reaches 1 - δ. After each pass the attack can
hand out a :class:`PassState`, from which a later call continues to the same ρ
(a long run that stopped resumes, :mod:`raylab.resume`).

The rule for one batch is in :mod:`raylab.core.updates`; with B=1 it is the
faithful per-image rule of ART's ``UniversalPerturbation``, which is how
``mode="faithful"`` runs. ``UAP(static_shapes=True)`` runs on the static-shape
update and projects after every batch (the projection of a feasible ρ is ρ);
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
from .fgsm import StepNorm
from .graphs import CapturedStep
from .metrics import model_device, predict_labels
from .norms import Norm, project_lp
from .transfer import device_batches
from .updates import StepStats, batch_update, masked_update

Mode = Literal["faithful", "batched"]


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


@dataclass(frozen=True)
class PassState:
    """Where an attack's call stands after its first ``passes`` passes: enough to continue it into the ρ of a call
    never stopped. The image order of pass k is the seed's k-th permutation, so it is drawn again, not stored.

    ``finished``: the call ended there (i_max passes, or the δ stop); continuing it returns at once.
    """

    passes: int
    rho: Tensor
    stats: StepStats = StepStats()
    history: tuple[dict[str, float], ...] = ()
    finished: bool = False


def begin(model: nn.Module, images: Tensor, *, rho: Tensor | None, resume: PassState | None, seed: int,
          max_passes: int) -> tuple[random.Random, PassState, Tensor]:
    """A call's start: the generator of its image orders (past the passes ``resume`` made), the state it starts
    from (``resume``, or no pass made) and ρ on the model's device (``resume``'s, else ``rho``, else zero);
    ValueError when ``resume`` has more passes than ``max_passes``."""
    order_rng, start = random.Random(seed), resume or PassState(0, torch.zeros(0))
    if not 0 <= start.passes <= max_passes:
        raise ValueError(f"cannot resume after {start.passes} passes of a run of max_passes={max_passes}")
    for _ in range(start.passes):
        order_rng.sample(range(len(images)), len(images))
    return order_rng, start, initial_rho(model, images, rho if resume is None else start.rho)


@dataclass(frozen=True)
class UAP:
    """A UAP attack: one object, one call (after foolbox's attacks).

    ``UAP(radius=r, p=2, eps=0.0005)(model, images)`` returns a :class:`UAPResult`.

    Args:
        radius: the Lp budget in model space (see :func:`raylab.core.norms.zeta_radius`).
        p: 2 or "inf": the norm of the projection.
        eps: the FGSM step size ε.
        max_passes: i_max, passes over the input images (the paper used 1).
        delta: stop once the score on the inputs reaches 1 - δ. The copy of
            ART's loop in the authors' repository (Natural_UAP,
            ``art/attacks/universal_perturbation.py``) never updated its
            fooling rate, so every run made i_max passes; δ=0 reproduces that
            (it stops only when every input is fooled, after which no further
            pass could change ρ).
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
        prefetch: on a GPU, copy batch k+1 to it on a side stream while batch k computes
            (:func:`raylab.core.transfer.device_batches`); the same batches, so the same UAP.
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
    prefetch: bool = True

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
        resume: PassState | None = None,
        on_pass: Callable[[PassState], None] | None = None,
    ) -> UAPResult:
        """Run the attack on ``images`` (N×C×H×W, uint8 raw or float model space).

        Args:
            rho: the perturbation carried in from the previous chunk (default zero).
            clean_labels: C(x) for each image, if already known.
            seed: the image order of pass k is ``random.Random(seed).sample``'s
                k-th permutation, the draw ART makes with the global ``random``.
            on_batch: called after every batch with its stats and the current ρ.
            resume: continue a call of the same arguments from the state its ``on_pass`` handed out (its ρ replaces
                ``rho``): the same UAP as that call made without stopping.
            on_pass: called after every pass with the state to resume from (ρ on the CPU).
        """
        order_rng, start, rho = begin(model, images, rho=rho, resume=resume, seed=seed, max_passes=self.max_passes)
        device = rho.device
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, got {device}")
        if clean_labels is None and isinstance(criterion, Untargeted):
            clean_labels = predict_labels(model, images, batch_size=self.eval_batch_size, amp=self.amp)
        elif clean_labels is None:  # a targeted UAP's rules never read the clean labels: no forward for them
            clean_labels = torch.zeros(len(images), dtype=torch.long)
        clean_labels = clean_labels.to(device)
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

            static_step = CapturedStep(step, (rho, counts), frozen=model.parameters()) if self.cuda_graphs else step
        total, history, passes, finished = start.stats, list(start.history), start.passes, start.finished
        score = history[-1]["input_score"] if history and self.delta > 0 else None
        converged = finished and passes < self.max_passes
        n, b = len(images), self.effective_batch_size
        while passes < self.max_passes and not finished:
            order = torch.tensor(order_rng.sample(range(n), n))
            pass_stats = StepStats()
            counts.zero_()
            for idx, x in device_batches(images, order, b, device=device, overlap=self.prefetch):
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
            stop = (score is not None and score >= 1 - self.delta) or pass_stats.active == 0
            converged, finished = stop and passes < self.max_passes, stop or passes == self.max_passes
            if on_pass is not None:
                on_pass(PassState(passes, rho.detach().cpu().clone(), total, tuple(history), finished))
        return UAPResult(rho.cpu(), passes, total, score, converged, history)

    def _input_score(self, model: nn.Module, images: Tensor, clean: Tensor, rho: Tensor, criterion: Criterion) -> float:
        adv = predict_labels(model, images, rho=rho, batch_size=self.eval_batch_size, clip=self.clip, amp=self.amp)
        return criterion.score(clean.cpu(), adv)

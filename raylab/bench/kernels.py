"""The bare kernels a UAP mode is measured against, and the FLOPs of one update of one image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import to_model_space
from ..core.fgsm import autocast
from .figures import timed


def bare_kernel(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int, amp: bool = False,
                clean_forward: bool = True) -> float:
    """Seconds for clean forward + forward/backward + acceptance forward over ``x`` at ``batch_size``, nothing else
    (``clean_forward=False``: without the clean forward, as on a later pass, where the engine carries C(x))."""
    device = next(model.parameters()).device
    given = torch.zeros(batch_size, dtype=torch.long, device=device)

    def run() -> None:
        for chunk in x.split(batch_size):
            xb = to_model_space(chunk.to(device))
            if clean_forward:
                with torch.no_grad(), autocast(device, amp):
                    y = model(xb).argmax(1)
            else:
                y = given[: len(xb)]
            xg = xb.clone().requires_grad_(True)
            with autocast(device, amp):
                loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            with torch.inference_mode(), autocast(device, amp):
                model(xb + 0.001 * g.sign()).argmax(1)

    _, seconds = timed(run)
    return seconds


def bare_sgd_kernel(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int, amp: bool = False) -> float:
    """Seconds of the stochastic-gradient method's kernel over ``x``: clean forward, then one forward/backward to
    the perturbation per batch (no acceptance forward), nothing else."""
    device = next(model.parameters()).device

    def run() -> None:
        rho = torch.zeros(x.shape[1:], device=device)
        for chunk in x.split(batch_size):
            xb = to_model_space(chunk.to(device))
            with torch.no_grad(), autocast(device, amp):
                y = model(xb).argmax(1)
            r = rho.clone().requires_grad_(True)
            with autocast(device, amp):
                loss = F.cross_entropy(model(xb + r).float(), y, reduction="none").clamp(max=10).sum()
            (g,) = torch.autograd.grad(loss, r)
            rho = rho + 0.001 * g.sign()

    _, seconds = timed(run)
    return seconds


def update_flops(model: torch.nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one batched update of one image (clean forward, forward and input-gradient backward, acceptance
    forward), counted by ``torch.utils.flop_counter`` on a CPU float32 copy of the model (convolutions and matmuls)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    cpu = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).requires_grad_(False)
    x = to_model_space(image[:1].cpu())
    with FlopCounterMode(display=False) as counter:  # .backward(): the counter's hooks do not take autograd.grad
        with torch.no_grad():
            y = cpu(x).argmax(1)
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(cpu(xg), y, reduction="sum").backward()  # weights frozen: the input gradient alone
        with torch.no_grad():
            cpu(x + 0.001 * xg.grad.sign())
    return int(counter.get_total_flops())

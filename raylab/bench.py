"""``raylab bench``: images/s of the UAP modes, measured side by side in one run.

Three ratios (issue #3's goals): faithful mode ÷ ART's ``UniversalPerturbation``
(same model, images, order; ρ compared too), batched mode ÷ the bare cost of
its kernel (clean forward + forward/backward + acceptance forward at batch B,
no pipeline), and batched mode ÷ ART.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core import UAP, to_model_space, zeta_radius
from .core.fgsm import autocast
from .data.medical import load_medmnist
from .data.natural import load_image_folder
from .models import ModelSpec, build_model


@dataclass(frozen=True)
class BenchConfig:
    data_dir: Path
    arch: str = "resnet18"
    image_size: int = 64
    channels: int = 1
    images: int = 200
    batch_size: int = 128
    eps: float = 0.002
    zeta: float = 0.04
    device: str = "cpu"
    amp: bool = False
    with_art: bool = True
    seed: int = 0


def _timed(fn) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def bare_kernel(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int, amp: bool = False) -> float:
    """Seconds for clean forward + forward/backward + acceptance forward over ``x`` at ``batch_size``, nothing else."""
    device = next(model.parameters()).device

    def run() -> None:
        for chunk in x.split(batch_size):
            xb = to_model_space(chunk.to(device))
            with torch.inference_mode(), autocast(device, amp):
                y = model(xb).argmax(1)
            xg = xb.clone().requires_grad_(True)
            with autocast(device, amp):
                loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            with torch.inference_mode(), autocast(device, amp):
                model(xb + 0.001 * g.sign()).argmax(1)

    _, seconds = _timed(run)
    return seconds


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    medical = load_medmnist(cfg.data_dir / "pneumoniamnist.npz").resized(cfg.image_size)
    images, _, _ = load_image_folder(cfg.data_dir / "imagenet-samples", channels=cfg.channels, size=cfg.image_size,
                                     limit=cfg.images, seed=cfg.seed)
    spec = ModelSpec(arch=cfg.arch, num_classes=2, in_channels=cfg.channels, image_size=cfg.image_size).validate()
    model = build_model(spec, seed=cfg.seed).to(cfg.device).eval()
    radius = zeta_radius(medical.train_images, zeta=cfg.zeta, p=2)
    n = len(images)
    figures: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   + (torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "CPU"),
        "model": f"{cfg.arch} {cfg.channels}x{cfg.image_size}x{cfg.image_size} (random init)",
        "images": n, "batch_size": cfg.batch_size, "device": cfg.device, "amp": cfg.amp,
        "torch": torch.__version__,
    }
    # warm-up (allocator, cudnn autotune)
    bare_kernel(model, images[: cfg.batch_size], batch_size=cfg.batch_size, amp=cfg.amp)
    faithful = UAP(radius=radius, p=2, eps=cfg.eps, mode="faithful")
    batched = UAP(radius=radius, p=2, eps=cfg.eps, mode="batched", batch_size=cfg.batch_size, amp=cfg.amp)
    res_f, t_f = _timed(lambda: faithful(model, images, seed=cfg.seed))
    res_b, t_b = _timed(lambda: batched(model, images, seed=cfg.seed))
    t_bare = bare_kernel(model, images, batch_size=cfg.batch_size, amp=cfg.amp)
    figures.update(
        faithful_images_per_s=n / t_f, faithful_accepted=res_f.stats.accepted,
        batched_images_per_s=n / t_b, batched_accepted=res_b.stats.accepted,
        bare_kernel_images_per_s=n / t_bare,
        batched_over_bare_kernel=t_bare / t_b,
    )
    if cfg.with_art:
        figures.update(_art(cfg, model, images, radius, res_f.rho, n / t_f, n / t_b))
    return figures


def _art(cfg: BenchConfig, model: torch.nn.Module, images: torch.Tensor, radius: float, rho: torch.Tensor,
         faithful_ips: float, batched_ips: float) -> dict[str, Any]:
    try:
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return {"art": "not installed (pip install adversarial-robustness-toolbox)"}
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                            nb_classes=2, device_type="gpu" if cfg.device.startswith("cuda") else "cpu")
    attack = UniversalPerturbation(clf, attacker="fgsm", attacker_params={"eps": cfg.eps}, delta=0.0, max_iter=1,
                                   eps=radius, norm=2, verbose=False)
    x = to_model_space(images).numpy()
    random.seed(cfg.seed)
    _, t_art = _timed(lambda: attack.generate(x))
    art_ips = len(images) / t_art
    return {
        "art_images_per_s": art_ips,
        "faithful_over_art": faithful_ips / art_ips,
        "batched_over_art": batched_ips / art_ips,
        "faithful_rho_max_abs_diff_vs_art": float(np.abs(rho.numpy() - attack.noise[0]).max()),
    }

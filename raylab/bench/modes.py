"""``raylab bench`` (without ``--engine``): images/s of the core's UAP modes, side by side in one run.

Ratios measured in one run: faithful mode ÷ ART's ``UniversalPerturbation``
(same model, images, order; ρ compared too), batched mode ÷ the bare cost of
its kernel (clean forward + forward/backward + acceptance forward at batch B,
no pipeline; and without the clean forward, as on a later pass where the engine
carries C(x)), batched mode ÷ ART, and the stochastic-gradient method (one
epoch) beside them: ÷ its own bare kernel (clean forward + forward/backward),
÷ batched mode and ÷ ART. The static-shape update (``--static``, the GPU path) and
``torch.compile`` (``--compile``) are measured beside the batched mode (on CUDA
also both modes replayed from CUDA graphs and the static-shape update with its batches copied
without the overlap of :mod:`raylab.core.transfer`, ``--static``), every
rate also as TFLOP/s from the FLOPs counted for one update of one image
(``torch.utils.flop_counter``) and, with ``--peak-tflops``, as a fraction of the
device's limit; ``decision_agreement`` is the share of a real stream's images
whose accept/reject decision under ``--amp`` equals float32's against the same ρ.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DEFAULT_DATA, check, check_device, finite, option, require_device
from ..core import SGDUAP, UAP, to_model_space, zeta_radius
from ..data.medical import load_medmnist
from ..data.natural import load_image_folder
from ..models import ModelSpec, build_model, for_inference, load_classifier
from .figures import cpu_name, timed
from .kernels import bare_kernel, bare_sgd_kernel, update_flops
from .profile import profile_update


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """``raylab bench``: what to measure on, side by side in one run."""

    data_dir: Path = option(DEFAULT_DATA, "where pneumoniamnist.npz and imagenet-samples/ are")
    arch: str = option("resnet18", "architecture (randomly initialized: speed does not depend on the weights)")
    model: str = option("", "a trained raylab checkpoint instead of --arch (its size and channels): a random network "
                            "accepts few steps, so autocast's decision agreement means more on a trained one")
    image_size: int = option(64, "input size in pixels")
    channels: int = option(1, "1 (gray, as the paper's chest X-ray models) or 3", choices=(1, 3))
    images: int = option(200, "natural images per measurement")
    batch_size: int = option(128, "images per update (per worker with --engine)")
    eps: float = option(0.002, "the paper's FGSM step size")
    zeta: float = option(0.04, "the L2 budget, as a ratio of the medical training images' mean norm")
    device: str = option("cpu", "cpu or cuda")
    amp: bool = option(False, "mixed precision (bf16 autocast on CPU, fp16 on CUDA) with channels-last")
    with_art: bool = option(True, "also run ART's UniversalPerturbation (--no-art where it is not installed)", flag="--art")
    static: bool = option(True, "also measure the batched mode on the static-shape update (the GPU path)", flag="--static")
    compile: bool = option(False, "also measure the static-shape batched mode with torch.compile")
    faithful: bool = option(True, "measure the faithful mode (batch 1; slow for large models)", flag="--faithful")
    peak_tflops: float = option(0.0, "the device's dense peak at the measured precision (TFLOP/s; H200 bf16 about 790): "
                                     "report each rate as a fraction of it (0: not reported)")
    profile: str = option("", "profile two static-shape batched updates with torch.profiler: the op table to this "
                              "file, a Chrome trace beside it (.json), the top ops' shares in the figures")
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("eps", "zeta", "peak_tflops"):
            finite(name, getattr(self, name))
        check(self.images >= 1, f"images must be >= 1, got {self.images}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.eps > 0 and self.zeta > 0, f"eps and zeta must be > 0, got eps={self.eps}, zeta={self.zeta}")
        check(self.peak_tflops >= 0, f"peak_tflops must be >= 0 (0: not reported), got {self.peak_tflops}")
        check_device(self.device)


def decision_agreement(exact: torch.nn.Module, fast: torch.nn.Module, images: torch.Tensor, *, radius: float, eps: float,
                       batch_size: int, amp: bool, seed: int = 0) -> float:
    """Share of ``images`` whose decision (step accepted or not) under ``fast`` with ``amp`` equals float32's under
    ``exact``, both against the ρ of the float32 run as it goes: one pass of the batched rule over a real stream."""
    from ..core import Untargeted, masked_update, predict_labels, project_lp

    device = next(exact.parameters()).device
    clean = predict_labels(exact, images).to(device)
    rho = torch.zeros(images.shape[1:], device=device)
    same, order = 0, torch.tensor(random.Random(seed).sample(range(len(images)), len(images)))
    for idx in order.split(batch_size):
        x = images[idx].to(device)
        ref = masked_update(exact, x, clean[idx], rho, eps=eps, criterion=Untargeted())
        got = masked_update(fast, x, clean[idx], rho, eps=eps, criterion=Untargeted(), amp=amp)
        same += int((ref.accepted == got.accepted).sum())
        rho = project_lp(rho + ref.step, radius=radius, p=2)
    return same / len(images)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    require_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.model:
        spec = load_classifier(cfg.model).spec
        cfg = dataclasses.replace(cfg, arch=spec.arch, channels=spec.in_channels, image_size=spec.image_size)

        def network() -> torch.nn.Module:
            return load_classifier(cfg.model)
    else:
        spec = ModelSpec(arch=cfg.arch, num_classes=2, in_channels=cfg.channels, image_size=cfg.image_size).validate()

        def network() -> torch.nn.Module:
            return build_model(spec, seed=cfg.seed)
    medical = load_medmnist(cfg.data_dir / "pneumoniamnist.npz").resized(cfg.image_size)
    images, _, _ = load_image_folder(cfg.data_dir / "imagenet-samples", channels=cfg.channels, size=cfg.image_size,
                                     limit=cfg.images, seed=cfg.seed)
    # Faithful mode and ART run the plain float32 model (NCHW, as ART would); batched mode and its bare kernel
    # run it as raylab's runs do (for_inference: channels-last memory, but NCHW for NCHW_ON_CPU on a CPU in
    # float32), with --amp's autocast when asked.
    model = network().to(cfg.device).eval()
    fast = for_inference(network(), device=cfg.device, amp=cfg.amp)
    radius = zeta_radius(medical.train_images, zeta=cfg.zeta, p=2)
    n = len(images)
    figures: dict[str, Any] = {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, "
                   + (torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "CPU"),
        "model": f"{cfg.arch} {cfg.channels}x{cfg.image_size}x{cfg.image_size} "
                 + (f"({cfg.model})" if cfg.model else "(random init)"),
        "images": n, "batch_size": cfg.batch_size, "device": cfg.device, "amp": cfg.amp,
        "torch": torch.__version__,
    }
    # warm-up (allocator, cudnn autotune)
    bare_kernel(fast, images[: cfg.batch_size], batch_size=cfg.batch_size, amp=cfg.amp)
    faithful = UAP(radius=radius, p=2, eps=cfg.eps, mode="faithful")
    batched = UAP(radius=radius, p=2, eps=cfg.eps, mode="batched", batch_size=cfg.batch_size, amp=cfg.amp)
    sgd = SGDUAP(radius=radius, p=2, max_passes=1, batch_size=cfg.batch_size, amp=cfg.amp)
    res_b, t_b = timed(lambda: batched(fast, images, seed=cfg.seed))
    _, t_sgd = timed(lambda: sgd(fast, images, seed=cfg.seed))
    t_bare = bare_kernel(fast, images, batch_size=cfg.batch_size, amp=cfg.amp)
    t_sgd_bare = bare_sgd_kernel(fast, images, batch_size=cfg.batch_size, amp=cfg.amp)
    t_later = bare_kernel(fast, images, batch_size=cfg.batch_size, amp=cfg.amp, clean_forward=False)
    figures.update(
        batched_images_per_s=n / t_b, batched_accepted=res_b.stats.accepted,
        bare_kernel_images_per_s=n / t_bare,
        bare_kernel_later_pass_images_per_s=n / t_later, later_pass_over_first_pass=t_bare / t_later,
        batched_over_bare_kernel=t_bare / t_b,
        sgd_images_per_s=n / t_sgd, sgd_bare_kernel_images_per_s=n / t_sgd_bare,
        sgd_over_bare_kernel=t_sgd_bare / t_sgd, sgd_over_batched=t_b / t_sgd,
    )
    static = dataclasses.replace(batched, static_shapes=True)
    graphs = cfg.static and cfg.device.startswith("cuda")  # CUDA graphs: measured beside the static-shape update
    if cfg.static:
        static(fast, images[: cfg.batch_size], seed=cfg.seed)  # warm-up: cuDNN autotune for the static shape
        res_s, t_s = timed(lambda: static(fast, images, seed=cfg.seed))
        figures.update(static_images_per_s=n / t_s, static_accepted=res_s.stats.accepted, static_over_batched=t_b / t_s,
                       static_over_bare_kernel=t_bare / t_s)
        if graphs:  # the same update with each batch copied after the last one's compute, not during it
            _, t_plain = timed(lambda: dataclasses.replace(static, prefetch=False)(fast, images, seed=cfg.seed))
            figures.update(static_plain_copy_images_per_s=n / t_plain, prefetch_over_plain_copy=t_plain / t_s)
            graphed = dataclasses.replace(static, cuda_graphs=True)
            graphed(fast, images[: cfg.batch_size], seed=cfg.seed)  # warm-up: the capture itself
            res_g, t_g = timed(lambda: graphed(fast, images, seed=cfg.seed))
            figures.update(graphed_images_per_s=n / t_g, graphed_over_static=t_s / t_g,
                           graphed_rho_max_abs_diff_vs_static=float((res_g.rho - res_s.rho).abs().max()))
    if cfg.compile:
        compiled = for_inference(network(), device=cfg.device, amp=cfg.amp, compile=True)
        _, t_warm = timed(lambda: static(compiled, images, seed=cfg.seed))  # pays the compilation of every shape
        res_c, t_c = timed(lambda: static(compiled, images, seed=cfg.seed))
        figures.update(compiled_images_per_s=n / t_c, compiled_accepted=res_c.stats.accepted,
                       compiled_over_batched=t_b / t_c, compile_seconds=t_warm - t_c)
    if cfg.profile:
        figures["profile_top_ops"] = profile_update(static, fast, images[: 2 * cfg.batch_size], cfg.profile, seed=cfg.seed)
    if cfg.amp:
        figures["decision_agreement_amp_vs_fp32"] = decision_agreement(
            model, fast, images, radius=radius, eps=cfg.eps, batch_size=cfg.batch_size, amp=True, seed=cfg.seed)
    if cfg.faithful:
        res_f, t_f = timed(lambda: faithful(model, images, seed=cfg.seed))
        figures.update(faithful_images_per_s=n / t_f, faithful_accepted=res_f.stats.accepted)
        if cfg.static:
            res_fs, t_fs = timed(lambda: dataclasses.replace(faithful, static_shapes=True)(model, images, seed=cfg.seed))
            figures.update(faithful_static_images_per_s=n / t_fs)
        if graphs:  # the launch-bound batch-1 loop replayed from one CUDA graph per image
            res_fg, t_fg = timed(lambda: dataclasses.replace(faithful, cuda_graphs=True)(model, images, seed=cfg.seed))
            figures.update(faithful_graphed_images_per_s=n / t_fg, faithful_graphed_over_faithful=t_f / t_fg,
                           faithful_graphed_rho_max_abs_diff_vs_static=float((res_fg.rho - res_fs.rho).abs().max()))
            if cfg.amp:
                amp_graphed = dataclasses.replace(faithful, cuda_graphs=True, amp=True)
                _, t_fa = timed(lambda: amp_graphed(fast, images, seed=cfg.seed))
                figures.update(faithful_graphed_amp_images_per_s=n / t_fa)
        if cfg.with_art:
            figures.update(_art(cfg, model, images, radius, res_f.rho, n / t_f, n / t_b, n / t_sgd))
    flops = update_flops(model, images)
    figures["gflop_per_update_image"] = flops / 1e9
    for key in [k for k in figures if k.endswith("_images_per_s")]:
        figures[key.replace("_images_per_s", "_tflops")] = figures[key] * flops / 1e12
        if cfg.peak_tflops:
            figures[key.replace("_images_per_s", "_fraction_of_peak")] = figures[key] * flops / 1e12 / cfg.peak_tflops
    return figures


def _art(cfg: BenchConfig, model: torch.nn.Module, images: torch.Tensor, radius: float, rho: torch.Tensor,
         faithful_ips: float, batched_ips: float, sgd_ips: float) -> dict[str, Any]:
    try:
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return {"art": "not installed (pip install adversarial-robustness-toolbox)"}
    with torch.no_grad():
        classes = model(to_model_space(images[:1]).to(next(model.parameters()).device)).shape[1]
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                            nb_classes=classes, device_type="gpu" if cfg.device.startswith("cuda") else "cpu")
    attack = UniversalPerturbation(clf, attacker="fgsm", attacker_params={"eps": cfg.eps}, delta=0.0, max_iter=1,
                                   eps=radius, norm=2, verbose=False)
    x = to_model_space(images).numpy()
    random.seed(cfg.seed)
    _, t_art = timed(lambda: attack.generate(x))
    art_ips = len(images) / t_art
    return {
        "art_images_per_s": art_ips,
        "faithful_over_art": faithful_ips / art_ips,
        "batched_over_art": batched_ips / art_ips,
        "sgd_over_art": sgd_ips / art_ips,
        "faithful_rho_max_abs_diff_vs_art": float(np.abs(rho.numpy() - attack.noise[0]).max()),
    }

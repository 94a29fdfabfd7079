"""``raylab bench``: images/s of the UAP modes, measured side by side in one run.

Ratios measured in one run: faithful mode ÷ ART's ``UniversalPerturbation``
(same model, images, order; ρ compared too), batched mode ÷ the bare cost of
its kernel (clean forward + forward/backward + acceptance forward at batch B,
no pipeline; and without the clean forward, as on a later pass where the engine
carries C(x)), batched mode ÷ ART, and the stochastic-gradient method (one
epoch) beside them: ÷ its own bare kernel (clean forward + forward/backward),
÷ batched mode and ÷ ART. The static-shape update (``--static``, the GPU path) and
``torch.compile`` (``--compile``) are measured beside the batched mode (on CUDA
also both modes replayed from CUDA graphs, ``--static``), every
rate also as TFLOP/s from the FLOPs counted for one update of one image
(``torch.utils.flop_counter``) and, with ``--peak-tflops``, as a fraction of the
device's limit; ``decision_agreement`` is the share of a real stream's images
whose accept/reject decision under ``--amp`` equals float32's against the same ρ.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import DECODE_PLACES, DEFAULT_DATA, option
from .core import SGDUAP, UAP, to_model_space, zeta_radius
from .core.fgsm import autocast
from .data.medical import load_medmnist
from .data.natural import load_image_folder
from .errors import InputError
from .models import ModelSpec, build_model, for_inference, load_classifier


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


def write_figures(figures: dict[str, Any], out: str | Path | None) -> None:
    """Print a benchmark's figures as JSON and, with ``out``, write them there (through the store)."""
    import json

    from .store import Store

    text = json.dumps(figures, indent=2)
    print(text)
    if out is not None:
        store, name = Store.beside(out)
        store.write_text(name, text + "\n")


def _timed(fn) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


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

    _, seconds = _timed(run)
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

    _, seconds = _timed(run)
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


def profile_update(attack: UAP, model: torch.nn.Module, images: torch.Tensor, out: str | Path, *, seed: int = 0,
                   top: int = 12) -> list[dict[str, Any]]:
    """Where an update's time goes: ``attack`` over ``images`` under ``torch.profiler`` (CUDA kernels too on a GPU).

    Writes the op table (sorted by self time on the device, or on the CPU without one) to ``out`` and a Chrome trace
    to ``out`` with ``.json``; returns the ``top`` ops with their share of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    from .store import Store

    cuda = next(model.parameters()).is_cuda
    attack(model, images, seed=seed)  # warm-up outside the profile (cuDNN autotune, allocator)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        attack(model, images, seed=seed)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    total = sum(getattr(e, key) for e in averages) or 1.0
    store, name = Store.beside(out)
    store.write_text(name, averages.table(sort_by=key, row_limit=40) + "\n")
    trace = Path(str(out)).with_suffix(".json")
    prof.export_chrome_trace(str(trace))
    ranked = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "share": getattr(e, key) / total, "calls": e.count} for e in ranked]


def decision_agreement(exact: torch.nn.Module, fast: torch.nn.Module, images: torch.Tensor, *, radius: float, eps: float,
                       batch_size: int, amp: bool, seed: int = 0) -> float:
    """Share of ``images`` whose decision (step accepted or not) under ``fast`` with ``amp`` equals float32's under
    ``exact``, both against the ρ of the float32 run as it goes: one pass of the batched rule over a real stream."""
    from .core import Untargeted, masked_update, predict_labels, project_lp

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
    # Faithful mode and ART run the plain float32 model (as ART would); batched mode and its bare kernel
    # run it with --amp's autocast and channels-last memory when asked.
    model = network().to(cfg.device).eval()
    fast = for_inference(network(), device=cfg.device, amp=cfg.amp)
    radius = zeta_radius(medical.train_images, zeta=cfg.zeta, p=2)
    n = len(images)
    figures: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
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
    res_b, t_b = _timed(lambda: batched(fast, images, seed=cfg.seed))
    _, t_sgd = _timed(lambda: sgd(fast, images, seed=cfg.seed))
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
        res_s, t_s = _timed(lambda: static(fast, images, seed=cfg.seed))
        figures.update(static_images_per_s=n / t_s, static_accepted=res_s.stats.accepted, static_over_batched=t_b / t_s,
                       static_over_bare_kernel=t_bare / t_s)
        if graphs:
            graphed = dataclasses.replace(static, cuda_graphs=True)
            graphed(fast, images[: cfg.batch_size], seed=cfg.seed)  # warm-up: the capture itself
            res_g, t_g = _timed(lambda: graphed(fast, images, seed=cfg.seed))
            figures.update(graphed_images_per_s=n / t_g, graphed_over_static=t_s / t_g,
                           graphed_rho_max_abs_diff_vs_static=float((res_g.rho - res_s.rho).abs().max()))
    if cfg.compile:
        compiled = for_inference(network(), device=cfg.device, amp=cfg.amp, compile=True)
        _, t_warm = _timed(lambda: static(compiled, images, seed=cfg.seed))  # pays the compilation of every shape
        res_c, t_c = _timed(lambda: static(compiled, images, seed=cfg.seed))
        figures.update(compiled_images_per_s=n / t_c, compiled_accepted=res_c.stats.accepted,
                       compiled_over_batched=t_b / t_c, compile_seconds=t_warm - t_c)
    if cfg.profile:
        figures["profile_top_ops"] = profile_update(static, fast, images[: 2 * cfg.batch_size], cfg.profile, seed=cfg.seed)
    if cfg.amp:
        figures["decision_agreement_amp_vs_fp32"] = decision_agreement(
            model, fast, images, radius=radius, eps=cfg.eps, batch_size=cfg.batch_size, amp=True, seed=cfg.seed)
    if cfg.faithful:
        res_f, t_f = _timed(lambda: faithful(model, images, seed=cfg.seed))
        figures.update(faithful_images_per_s=n / t_f, faithful_accepted=res_f.stats.accepted)
        if cfg.static:
            res_fs, t_fs = _timed(lambda: dataclasses.replace(faithful, static_shapes=True)(model, images, seed=cfg.seed))
            figures.update(faithful_static_images_per_s=n / t_fs)
        if graphs:  # the launch-bound batch-1 loop replayed from one CUDA graph per image
            res_fg, t_fg = _timed(lambda: dataclasses.replace(faithful, cuda_graphs=True)(model, images, seed=cfg.seed))
            figures.update(faithful_graphed_images_per_s=n / t_fg, faithful_graphed_over_faithful=t_f / t_fg,
                           faithful_graphed_rho_max_abs_diff_vs_static=float((res_fg.rho - res_fs.rho).abs().max()))
            if cfg.amp:
                amp_graphed = dataclasses.replace(faithful, cuda_graphs=True, amp=True)
                _, t_fa = _timed(lambda: amp_graphed(fast, images, seed=cfg.seed))
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
    _, t_art = _timed(lambda: attack.generate(x))
    art_ips = len(images) / t_art
    return {
        "art_images_per_s": art_ips,
        "faithful_over_art": faithful_ips / art_ips,
        "batched_over_art": batched_ips / art_ips,
        "sgd_over_art": sgd_ips / art_ips,
        "faithful_rho_max_abs_diff_vs_art": float(np.abs(rho.numpy() - attack.noise[0]).max()),
    }


@dataclass(frozen=True, kw_only=True)
class EngineBenchConfig(BenchConfig):
    """``raylab bench --engine``: the engine end to end vs its bare kernel, decode rates, W workers vs one."""

    workers: tuple[int, ...] = option((1, 2), "with --engine: the worker counts to compare")
    cpus_per_worker: float = 1.0
    cpus_per_reader: float = 1.0
    shard_format: str = option("png", "with --engine: how the shards store the resized photos (jpg: what a GPU needs)",
                               choices=("png", "jpg"))
    decode_on: tuple[str, ...] = option(("reader",), "with --engine: where the engine decodes JPEGs (worker: on its "
                                                      "device; both: reader worker)", choices=DECODE_PLACES)


def decode_rate(urls: list[str], *, channels: int, size: int, threads: int = 1) -> float:
    """Images/s that one reader decodes (and resizes) from shards with ``threads`` decode threads."""
    from .data.shards import ShardReport, decode_stream, iter_samples

    report = ShardReport()
    t = time.perf_counter()
    n = sum(1 for _ in decode_stream(iter_samples(urls, report=report), channels=channels, size=size, report=report,
                                     threads=threads))
    return n / (time.perf_counter() - t)


def device_decode_rate(urls: list[str], *, channels: int, size: int, batch_size: int, device: str) -> float:
    """Images/s that a worker decodes on its device (``--decode-on worker``: nvJPEG on a GPU), JPEGs read ahead."""
    from .data.jpeg import EncodedBatch, decode_batch
    from .data.shards import ShardReport, batches, decode_stream, iter_samples

    encoded = [b.images for b in batches(decode_stream(iter_samples(urls), channels=channels, size=size,
                                                       report=ShardReport(), device_jpegs=True), batch_size)]
    if not all(isinstance(b, EncodedBatch) for b in encoded):
        return float("nan")  # nothing to decode there (PNG shards)
    decode_batch(encoded[0], channels=channels, device=device)  # warm-up: the decoder's handles
    n, t = 0, time.perf_counter()
    for b in encoded:
        n += len(decode_batch(b, channels=channels, device=device)[0])
    if torch.cuda.is_available() and device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def _medical_with(npz: Path, channels: int, root: Path) -> Path:
    """The medical set with ``channels`` channels for the engine's model: PneumoniaMNIST's gray X-rays repeated to
    RGB for an RGB model (the engine checks that they match), written under ``root``."""
    if channels == 1:
        return npz
    with np.load(npz) as d:
        arrays = {k: np.repeat(v[..., None], 3, axis=-1) if k.endswith("_images") else v for k, v in d.items()}
    out = root / "pneumoniamnist.npz"  # the name keeps its class names
    np.savez(out, **arrays)
    return out


def run_engine_bench(cfg: EngineBenchConfig, *, log=print) -> dict[str, Any]:
    import tempfile

    import ray

    from .config import EngineConfig
    from .data.shards import ShardReport, decode_stream, iter_samples, write_shards
    from .engine import run_engine
    from .models import save_classifier

    if cfg.model:
        raise InputError("--model is not used with --engine, which measures a random-init --arch")
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    spec = ModelSpec(arch=cfg.arch, num_classes=2, in_channels=cfg.channels, image_size=cfg.image_size,
                     class_names=("NORMAL", "PNEUMONIA")).validate()
    model = build_model(spec, seed=cfg.seed).eval()
    figures: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   + (torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "CPU"),
        "model": f"{cfg.arch} {cfg.channels}x{cfg.image_size}x{cfg.image_size} (random init)",
        "images": cfg.images, "batch_size_per_worker": cfg.batch_size, "device": cfg.device, "amp": cfg.amp,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = cfg.data_dir / "imagenet-samples"
        orig = write_shards(source, root / "orig", shard_size=64, sample=cfg.images, seed=cfg.seed)
        small = write_shards(source, root / "small", shard_size=64, sample=cfg.images, seed=cfg.seed,
                             size=cfg.image_size, channels=cfg.channels, image_format=cfg.shard_format)
        threads = max(1, round(cfg.cpus_per_reader))
        figures.update(shard_format=cfg.shard_format, decode_on=list(cfg.decode_on), decode_threads_per_reader=threads)
        kw = dict(channels=cfg.channels, size=cfg.image_size)
        figures["decode_images_per_s_per_core_original_jpeg"] = decode_rate(orig.urls, **kw)
        figures["decode_images_per_s_per_core_stored_resized"] = decode_rate(small.urls, **kw)
        if threads > 1:
            figures["decode_images_per_s_one_reader_stored_resized"] = decode_rate(small.urls, threads=threads, **kw)
        if cfg.shard_format == "jpg":
            figures["device_decode_images_per_s"] = device_decode_rate(small.urls, batch_size=cfg.batch_size,
                                                                       device=cfg.device, **kw)
        report = ShardReport()
        images = torch.stack([x for _, x in decode_stream(iter_samples(small.urls, report=report), channels=cfg.channels,
                                                          size=cfg.image_size, report=report)])
        m = for_inference(model, device=cfg.device, amp=cfg.amp)
        bare_kernel(m, images[: cfg.batch_size], batch_size=cfg.batch_size, amp=cfg.amp)  # warm-up
        t_bare = bare_kernel(m, images, batch_size=cfg.batch_size, amp=cfg.amp)
        figures["bare_kernel_images_per_s"] = len(images) / t_bare
        bare_sgd_kernel(m, images[: cfg.batch_size], batch_size=cfg.batch_size, amp=cfg.amp)
        figures["sgd_bare_kernel_images_per_s"] = len(images) / bare_sgd_kernel(m, images, batch_size=cfg.batch_size, amp=cfg.amp)
        model_path = save_classifier(model.cpu().to(memory_format=torch.contiguous_format), root / "model.pt")
        medical = _medical_with(cfg.data_dir / "pneumoniamnist.npz", cfg.channels, root)
        if not ray.is_initialized():
            ray.init(logging_level="ERROR")
        cpus = ray.cluster_resources().get("CPU", 1)
        # the paper's method and SGD on the first decode place; the paper's method on any other (its own keys)
        runs = [("paper", cfg.decode_on[0], "engine"), ("sgd", cfg.decode_on[0], "engine_sgd")]
        runs += [("paper", where, f"engine_decode_on_{where}") for where in cfg.decode_on[1:]]
        for method, where, prefix in runs:
            for w in cfg.workers:
                share = min(cfg.cpus_per_worker, cpus / (2 * w))  # W workers and W readers must fit on this machine
                ec = EngineConfig(model=str(model_path), medical=medical, shards=str(root / "small"),
                                  out=str(root / f"{prefix}-w{w}"), method=method, max_passes=1, zeta=0.04, eps=0.002,
                                  batch_size=cfg.batch_size, workers=w, device=cfg.device, amp=cfg.amp, cpus_per_worker=share,
                                  cpus_per_reader=min(cfg.cpus_per_reader, share), decode_threads=threads,
                                  decode_on=where, progress_every=1e9, examples=0, checkpoint_every=10_000)
                log(f"{method} engine with {w} worker(s), decoding on the {where}...")
                build = run_engine(ec, log=lambda s: None).build
                figures[f"{prefix}_{w}w_images_per_s"] = build.images_per_second
                figures[f"{prefix}_{w}w_worker_idle_fraction"] = (build.engine or {})["worker_idle_fraction"]
            bare = figures["sgd_bare_kernel_images_per_s" if method == "sgd" else "bare_kernel_images_per_s"]
            if 1 in cfg.workers:
                figures[f"{prefix}_1w_over_bare_kernel"] = figures[f"{prefix}_1w_images_per_s"] / bare
            if 2 in cfg.workers and 1 in cfg.workers:
                figures[f"{prefix}_2w_over_1w"] = figures[f"{prefix}_2w_images_per_s"] / figures[f"{prefix}_1w_images_per_s"]
    return figures

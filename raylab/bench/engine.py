"""``raylab bench --engine``: the engine end to end beside its bare kernel, the decode rates, W workers beside one,
staged batches beside unstaged ones, and a batch's trip through the object store as a tensor beside the engine's
array."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DECODE_PLACES, check, option, require_device
from ..errors import InputError
from ..models import ModelSpec, build_model, for_inference
from .figures import cpu_name
from .kernels import bare_kernel, bare_sgd_kernel
from .modes import BenchConfig


@dataclass(frozen=True, kw_only=True)
class EngineBenchConfig(BenchConfig):
    """``raylab bench --engine``: the engine end to end vs its bare kernel, decode rates, W workers vs one."""

    workers: tuple[int, ...] = option((1, 2), "with --engine: the worker counts to compare")
    cpus_per_worker: float = option(1.0, "with --engine: CPUs each worker asks Ray for (and its torch threads)")
    cpus_per_reader: float = option(1.0, "with --engine: CPUs each reader asks Ray for (and its decode threads)")
    shard_format: str = option("png", "with --engine: how the shards store the resized photos (jpg: what a GPU needs)",
                               choices=("png", "jpg"))
    decode_on: tuple[str, ...] = option(("reader",), "with --engine: where the engine decodes JPEGs (worker: on its "
                                                      "device; both: reader worker)", choices=DECODE_PLACES)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.workers) and min(self.workers) >= 1, f"workers must be counts >= 1, got {list(self.workers)}")
        check(self.cpus_per_worker > 0 and self.cpus_per_reader > 0,
              f"cpus_per_worker and cpus_per_reader must be > 0, got {self.cpus_per_worker} and {self.cpus_per_reader}")


def decode_rate(urls: list[str], *, channels: int, size: int, threads: int = 1) -> float:
    """Images/s that one reader decodes (and resizes) from shards with ``threads`` decode threads."""
    from ..data.shards import ShardReport, decode_stream, iter_samples

    report = ShardReport()
    t = time.perf_counter()
    n = sum(1 for _ in decode_stream(iter_samples(urls, report=report), channels=channels, size=size, report=report,
                                     threads=threads))
    return n / (time.perf_counter() - t)


def device_decode_rate(urls: list[str], *, channels: int, size: int, batch_size: int, device: str) -> float:
    """Images/s that a worker decodes on its device (``--decode-on worker``: nvJPEG on a GPU), JPEGs read ahead."""
    from ..data.jpeg import EncodedBatch, decode_batch
    from ..data.shards import ShardReport, batches, decode_stream, iter_samples

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


class _Receiver:
    """A bare actor: when its method started, and how long converting its batch took (:func:`transport_seconds`)."""

    def receive(self, images: Any, submitted: float) -> tuple[float, float]:
        from ..core import to_model_space
        from ..engine.transport import from_wire

        started = time.perf_counter()
        to_model_space(from_wire(images))
        return started - submitted, time.perf_counter() - started


def transport_seconds(batch: torch.Tensor, *, repeats: int = 5) -> dict[str, float]:
    """Median seconds from submitting an actor call with ``batch`` (a new object each time) to the method's start,
    and then to the batch converted to model space: passed as a tensor, and as the engine passes it (an array,
    :mod:`raylab.engine.transport`). Needs a running Ray."""
    import ray

    from ..engine.transport import to_wire

    actor = ray.remote(num_cpus=0)(_Receiver).remote()
    out: dict[str, float] = {}
    try:
        for name, wire in (("tensor", lambda t: t), ("wire", to_wire)):
            ray.get(actor.receive.remote(ray.put(wire(batch.clone())), time.perf_counter()))  # warm-up
            runs = []
            for _ in range(repeats):
                ref = ray.put(wire(batch.clone()))
                runs.append(ray.get(actor.receive.remote(ref, time.perf_counter())))
                del ref
            out[f"transport_{name}_to_start_s"] = float(np.median([r[0] for r in runs]))
            out[f"transport_{name}_convert_s"] = float(np.median([r[1] for r in runs]))
    finally:
        ray.kill(actor)
    # until the method starts: what a GPU worker waits (its conversion runs on the device); and all of it, on a CPU
    out["transport_tensor_over_wire_to_start"] = out["transport_tensor_to_start_s"] / out["transport_wire_to_start_s"]
    out["transport_tensor_over_wire"] = ((out["transport_tensor_to_start_s"] + out["transport_tensor_convert_s"])
                                         / (out["transport_wire_to_start_s"] + out["transport_wire_convert_s"]))
    return out


def run_engine_bench(cfg: EngineBenchConfig, *, log=print) -> dict[str, Any]:
    """Measure; torch's intra-op threads are the worker's (``cpus_per_worker``) for the kernels, and the caller's
    again after: the bench runs in the caller's process (the CLI's, a test's), whose later work would otherwise run
    on one thread."""
    require_device(cfg.device)  # its kernels run here, in the caller's process
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    try:
        return _engine_bench(cfg, log)
    finally:
        torch.set_num_threads(previous)


def _engine_bench(cfg: EngineBenchConfig, log) -> dict[str, Any]:
    import tempfile

    import ray

    from ..config import EngineConfig
    from ..data.shards import ShardReport, decode_stream, iter_samples, write_shards
    from ..engine import run_engine
    from ..models import save_classifier

    if cfg.model:
        raise InputError("--model is not used with --engine, which measures a random-init --arch")
    spec = ModelSpec(arch=cfg.arch, num_classes=2, in_channels=cfg.channels, image_size=cfg.image_size,
                     class_names=("NORMAL", "PNEUMONIA")).validate()
    model = build_model(spec, seed=cfg.seed).eval()
    figures: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, "
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
        medical = cfg.data_dir / "pneumoniamnist.npz"  # gray X-rays, repeated to RGB for an RGB model
        if not ray.is_initialized():
            ray.init(logging_level="ERROR")
        cpus = ray.cluster_resources().get("CPU", 1)
        batch = images[: cfg.batch_size].repeat(-(-cfg.batch_size // len(images)), 1, 1, 1)[: cfg.batch_size]
        figures.update(transport_batch_mib=batch.numel() / 2**20, **transport_seconds(batch))
        # the paper's method and SGD on the first decode place; the paper's method on any other (its own keys); and
        # on one worker, the paper's method with the other staging (engine/staging.py: on by default for cuda only)
        first = cfg.decode_on[0]
        runs = [("paper", first, "engine", "auto", cfg.workers), ("sgd", first, "engine_sgd", "auto", cfg.workers)]
        runs += [("paper", where, f"engine_decode_on_{where}", "auto", cfg.workers) for where in cfg.decode_on[1:]]
        staged_by_default = cfg.device.startswith("cuda")
        other = "off" if staged_by_default else "on"
        if 1 in cfg.workers:
            runs.append(("paper", first, f"engine_stage_{other}", other, (1,)))
        for method, where, prefix, stage, worker_counts in runs:
            for w in worker_counts:
                share = min(cfg.cpus_per_worker, cpus / (2 * w))  # W workers and W readers must fit on this machine
                ec = EngineConfig(model=str(model_path), medical=medical, shards=str(root / "small"),
                                  out=str(root / f"{prefix}-w{w}"), method=method, max_passes=1, zeta=0.04, eps=0.002,
                                  batch_size=cfg.batch_size, workers=w, device=cfg.device, amp=cfg.amp, cpus_per_worker=share,
                                  cpus_per_reader=min(cfg.cpus_per_reader, share), decode_threads=threads,
                                  decode_on=where, stage=stage, progress_every=1e9, examples=0, checkpoint_every=10_000)
                log(f"{method} engine with {w} worker(s), decoding on the {where}, staging {stage}...")
                build = run_engine(ec, log=lambda s: None).build
                figures[f"{prefix}_{w}w_images_per_s"] = build.images_per_second
                figures[f"{prefix}_{w}w_worker_idle_fraction"] = (build.engine or {})["worker_idle_fraction"]
                figures[f"{prefix}_{w}w_batches_staged"] = (build.engine or {})["batches_staged"]
            bare = figures["sgd_bare_kernel_images_per_s" if method == "sgd" else "bare_kernel_images_per_s"]
            if 1 in cfg.workers:
                figures[f"{prefix}_1w_over_bare_kernel"] = figures[f"{prefix}_1w_images_per_s"] / bare
            if 2 in worker_counts and 1 in worker_counts:
                figures[f"{prefix}_2w_over_1w"] = figures[f"{prefix}_2w_images_per_s"] / figures[f"{prefix}_1w_images_per_s"]
        if 1 in cfg.workers:  # the same run staged over unstaged, side by side
            staged, unstaged = (("engine", f"engine_stage_{other}") if staged_by_default else (f"engine_stage_{other}", "engine"))
            figures["engine_1w_staged_over_unstaged"] = (figures[f"{staged}_1w_images_per_s"]
                                                         / figures[f"{unstaged}_1w_images_per_s"])
    return figures

"""``raylab``: the command line. Parses argv into the typed configs (their options are derived from the configs'
own declarations, :mod:`raylab.options`), and calls the layers below.

Subcommands: ``pretrain``, ``train``, ``import-model``, ``uap`` (one machine), ``evaluate`` (a finished UAP on
another model), ``shard``, ``index-shards`` and ``generate`` (the distributed engine on Ray), ``sweep`` (Ray Tune) and
``results`` (the Parquet results), ``audit`` (one model, one verdict, one report), ``reproduce`` (the paper's study
and its report), ``dashboard`` (Grafana JSON, Prometheus config, PNG), ``demo``, ``bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import InputError, RaylabError
from .options import add_options, build

if TYPE_CHECKING:
    import pyarrow as pa


def _model_options(p: argparse.ArgumentParser, *, out_help: str) -> None:
    from .models import ARCHITECTURES

    p.add_argument("--arch", default="resnet18", help=f"architecture ({', '.join(ARCHITECTURES)})")
    p.add_argument("--image-size", type=int, default=64, help="input size in pixels (default 64)")
    p.add_argument("--out", type=Path, required=True, help=out_help)


def _metrics_options(p: argparse.ArgumentParser) -> None:
    """--metrics-port/-host/-linger of a single-process command (raylab.telemetry.served)."""
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics (raylab.telemetry) on this port while the run lasts (0 picks one)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default loopback only)")
    p.add_argument("--metrics-linger", type=float, default=15.0,
                   help="seconds to keep serving metrics after the run, so the last values get scraped")


def _log(line: str) -> None:
    """A command's progress line, flushed at once (a job's log shows it as it happens)."""
    print(line, flush=True)


DESCRIPTION = ("Audits medical image classifiers for universal adversarial perturbations made from natural images, "
               "without any medical image (Minagi, Hirano & Takemoto, J. Imaging 2022), on one machine or a Ray cluster.")
EPILOG = ("Start with `raylab demo` (a small model trained and audited, about 15 minutes on 2 CPU cores), or audit "
          "your own: `raylab audit --model MODEL --data MEDICAL --natural PHOTOS --out FOLDER`. `raylab COMMAND --help` "
          "for each command's options.")


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose own --help starts with what it does (its line in ``raylab --help``), and whose errors,
    unknown arguments included, name it (``raylab shard: error: ...``)."""
    p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:])
    p.set_defaults(_parser=p)
    return p


#: Each command's line in ``raylab --help``, and the first line of its own --help.
HELP = {
    "pretrain": "natural-image pretraining of a backbone (exemplar training on a photo folder)",
    "train": "fine-tune (transfer learning) or train from scratch on a medical dataset",
    "uap": "generate a UAP and evaluate it on the medical test set (single machine)",
    "evaluate": "evaluate a finished UAP (uap.npy) on a model, which need not be the one it was made on: does it "
                "transfer?",
    "shard": "write webdataset tar shards (and a manifest) from an image folder or a MedMNIST .npz",
    "index-shards": "index webdataset shards written elsewhere (img2dataset, webdataset): write their manifest.json "
                    "in place, so every command streams them",
    "generate": "distributed UAP on Ray: shards -> reader actors -> worker actors -> one rho (resumable)",
    "sweep": "a Ray Tune grid (or random search) of UAPs over eps, p, zeta, source, target, model, i_max",
    "import-model": "a model trained elsewhere (state dict, TorchScript, torch.export or ONNX) and its model card, "
                    "checked and written as a raylab checkpoint to audit",
    "results": "summarize a Parquet results location, filtered by any column",
    "demo": "pretrain + fine-tune a small model on PneumoniaMNIST, then audit it (raylab audit --budget quick) with "
            "UAPs from ImageNet photos",
    "audit": "how vulnerable is this model to UAPs made without any medical image? Both methods, the references, "
             "targets, seeds; one verdict and one report",
    "reproduce": "the paper's whole study (models, eps/p selection, zeta sweep, targets, controls) and its report",
    "dashboard": "Grafana dashboard JSON, a Prometheus config for Ray, or the dashboard rendered to PNG",
    "bench": "images/s of faithful and batched modes vs ART and vs the bare kernel",
}


def _pretrain_options(p: argparse.ArgumentParser) -> None:
    from .config import DEFAULT_DATA
    from .train import PretrainConfig

    p.add_argument("--images", type=Path, default=DEFAULT_DATA / "imagenet-samples", help="a folder of natural photos")
    _model_options(p, out_help="checkpoint path (.pt)")
    add_options(p, PretrainConfig)


def _train_options(t: argparse.ArgumentParser) -> None:
    from .config import DEFAULT_MEDICAL
    from .train import TrainConfig

    t.add_argument("--data", type=Path, default=DEFAULT_MEDICAL, help="MedMNIST .npz or a folder with train_pre.csv/test_pre.csv")
    t.add_argument("--backbone", default=None, help="natural-image weights: a checkpoint from `raylab pretrain`, a torchvision "
                                                    ".pth, or 'imagenet' (torchvision's: online only; efficientnet_lite0's are "
                                                    "packaged: offline); omit for random initialization")
    t.add_argument("--normalize", choices=["none", "imagenet", "lite"], default=None,
                   help="input normalization (default: what the backbone's weights were trained with, else none)")
    _model_options(t, out_help="checkpoint path (.pt); metrics go beside it as .json")
    add_options(t, TrainConfig)


def _uap_options(u: argparse.ArgumentParser) -> None:
    from .config import UAPConfig

    add_options(u, UAPConfig)
    _metrics_options(u)


def _evaluate_options(e: argparse.ArgumentParser) -> None:
    from .config import EvaluateConfig

    add_options(e, EvaluateConfig)


def _shard_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("source", help="image folder (path or fsspec URL), a .txt list of image files, or a MedMNIST .npz")
    s.add_argument("out", nargs="?", help="output directory or fsspec URL (s3://, gs://); or give it as --out")
    s.add_argument("--out", dest="out_option", metavar="OUT", default=None, help="the output, as other commands name it")
    s.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    s.add_argument("--sample", type=int, default=None, help="a seeded random sample of this many images (the paper drew 100,000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=None, help="store images already resized to this size (decodes much faster)")
    s.add_argument("--channels", type=int, choices=[1, 3], default=None, help="store images converted to gray (1) or RGB (3)")
    s.add_argument("--format", dest="image_format", choices=["png", "jpg"], default="png",
                   help="how resized images are stored: png (lossless, default) or jpg (quality 95; decodes ~3x faster at 299 px)")
    s.add_argument("--split", default="train", help="split of a .npz source (default train)")
    s.add_argument("--ray", action="store_true", help="write the shards as Ray tasks over the cluster's CPUs (same shards "
                                                      "and manifest; the output must be writable from every node)")
    s.add_argument("--cpus-per-task", type=float, default=1.0, help="with --ray: CPUs per shard task (default 1)")
    s.add_argument("--address", default=None, help="with --ray: Ray address (default: RAY_ADDRESS, else a local Ray)")


def _index_shards_options(ix: argparse.ArgumentParser) -> None:
    ix.add_argument("location", help="the folder (path or fsspec URL) that holds the .tar shards")
    ix.add_argument("--threads", type=int, default=4, help="shards read at once (default 4)")
    ix.add_argument("--ray", action="store_true", help="index each shard as a Ray task over the cluster's CPUs")
    ix.add_argument("--cpus-per-task", type=float, default=1.0, help="with --ray: CPUs per shard task (default 1)")
    ix.add_argument("--address", default=None, help="with --ray: Ray address (default: RAY_ADDRESS, else a local Ray)")


def _generate_options(g: argparse.ArgumentParser) -> None:
    from .config import EngineConfig

    add_options(g, EngineConfig)
    g.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")


def _sweep_options(w: argparse.ArgumentParser) -> None:
    from .sweep import SweepConfig

    add_options(w, SweepConfig)
    w.add_argument("--select", choices=["best"], default=None, help="best: the paper's rule, the eps and p with the highest R_f (R_s) per zeta")
    w.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")


def _import_model_options(im: argparse.ArgumentParser) -> None:
    im.add_argument("--card", type=Path, required=True, help="the model card (YAML or JSON; see raylab/cards.py)")
    im.add_argument("--weights", type=Path, required=True, help="the state dict (.pth/.pt), TorchScript (.pt), "
                                                                "torch.export (.pt2) or ONNX (.onnx) file the card describes")
    im.add_argument("--out", type=Path, required=True, help="where to write the raylab checkpoint (.pt)")


def _results_options(r: argparse.ArgumentParser) -> None:
    r.add_argument("location", help="results location (path or fsspec URL)")
    r.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE", help="keep rows where COLUMN equals VALUE (repeatable; a path by its last parts, as the table shows it)")
    r.add_argument("--select", choices=["best"], default=None,
                   help="best: the eps and p with the highest R_f (R_s) per zeta, by the mean over seeds")
    r.add_argument("--over-seeds", action="store_true",
                   help="one line per grid point, each rate as mean ± sd over its seeds (rows that differ only by seed)")
    r.add_argument("--columns", default=None, help="comma-separated columns to show")
    r.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw each rate over --x as curves, mean ± sd over seeds, random control dotted (path or "
                        "URL; .png, or .pdf/.svg for a paper)")
    r.add_argument("--x", default="zeta", help="the column the plot's rates are drawn over (default: zeta; also eps, lr, ...)")


def _demo_options(d: argparse.ArgumentParser) -> None:
    from .config import DEFAULT_DATA

    d.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--pretrain-epochs", type=int, default=30)
    d.add_argument("--train-epochs", type=int, default=3)


def _audit_options(au: argparse.ArgumentParser) -> None:
    from .audit import AuditConfig

    add_options(au, AuditConfig)
    au.add_argument("--address", default=None, help="with --ray: Ray address (default: RAY_ADDRESS, else a local Ray)")
    _metrics_options(au)


def _reproduce_options(rp: argparse.ArgumentParser) -> None:
    from .config import DEFAULT_DATA

    rp.add_argument("--preset", choices=["tiny", "cpu-small", "paper"], default="cpu-small")
    rp.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="where pneumoniamnist.npz, imagenet-samples/ and flickr8k-samples/ are")
    rp.add_argument("--medical", type=Path, action="append", default=None,
                    help="a medical dataset (.npz or image folder with CSVs); repeat for several (default: the preset's)")
    rp.add_argument("--natural-a", type=Path, default=None, help="natural image set A (default: <data-dir>/imagenet-samples)")
    rp.add_argument("--natural-b", type=Path, default=None, help="natural image set B (default: <data-dir>/flickr8k-samples)")
    rp.add_argument("--archs", default=None, help="comma-separated architectures (default: the preset's)")
    rp.add_argument("--backbones", default=None,
                    help="comma-separated, one per architecture: natural (pretrain on natural set A), imagenet, or a .pth file")
    rp.add_argument("--seeds", type=int, default=None,
                    help="how many seeds per UAP, both methods: seeds 0..N-1 (default: the preset's)")
    rp.add_argument("--targets", default=None, help="comma-separated target classes, names or indices (default: PNEUMONIA,NORMAL)")
    rp.add_argument("--device", default=None)
    rp.add_argument("--out", type=Path, default=None, help="default runs/reproduce/<preset>")
    rp.add_argument("--report", type=Path, default=None, help="report folder (default <out>/report)")
    rp.add_argument("--estimate", type=_rates, default=None, metavar="IMG_PER_S",
                    help="only print the GPU-hours of the preset's UAP updates at this measured update rate "
                         "(one number, or arch=rate,... per architecture)")
    _metrics_options(rp)


def _dashboard_options(o: argparse.ArgumentParser) -> None:
    osub = o.add_subparsers(dest="action", required=True)
    ow = _command(osub, "write", help="write dashboards/raylab.json (Grafana, importable as is)")
    ow.add_argument("--out", type=Path, default=Path("dashboards"))
    oc = _command(osub, "prometheus-config", help="print a prometheus.yml that scrapes Ray's metrics agents (and --target)")
    oc.add_argument("--sd-file", default=None, help="Ray's service-discovery file (default /tmp/ray/prom_metrics_service_discovery.json)")
    oc.add_argument("--target", action="append", default=[], metavar="HOST:PORT", help="a `raylab uap --metrics-port` run (repeatable)")
    oc.add_argument("--scrape-interval", default="10s")
    orr = _command(osub, "render", help="draw every dashboard panel from a Prometheus into one PNG")
    orr.add_argument("--prometheus", default="http://127.0.0.1:9090")
    orr.add_argument("--since", type=float, default=3600.0, help="seconds back from now (default 3600)")
    orr.add_argument("--run", default=".*", help="a run name or regex (the dashboard's run variable)")
    orr.add_argument("--out", type=Path, default=Path("dashboard.png"))


def _bench_options(b: argparse.ArgumentParser) -> None:
    from .bench import EngineBenchConfig

    add_options(b, EngineBenchConfig)
    b.add_argument("--engine", action="store_true", help="benchmark the Ray engine end to end instead (shards, readers, workers)")
    b.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "pretrain": _pretrain_options,
    "train": _train_options,
    "uap": _uap_options,
    "evaluate": _evaluate_options,
    "shard": _shard_options,
    "index-shards": _index_shards_options,
    "generate": _generate_options,
    "sweep": _sweep_options,
    "import-model": _import_model_options,
    "results": _results_options,
    "demo": _demo_options,
    "audit": _audit_options,
    "reproduce": _reproduce_options,
    "dashboard": _dashboard_options,
    "bench": _bench_options,
}


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """raylab's parser, with the options of command ``only`` (every command's when None; none when it names none).
    Declaring a command's options imports its configs, and with them torch: `raylab results`, `raylab dashboard` and
    `raylab --help` need neither, and start in about a second, not four."""
    parser = argparse.ArgumentParser(prog="raylab", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help in HELP.items():
        p = _command(sub, name, help)
        if only is None or only == name:
            OPTIONS[name](p)
    return parser


def _print_epoch(m: dict) -> None:
    from .train import epoch_line

    print("  " + epoch_line(m), flush=True)


def cmd_pretrain(a: argparse.Namespace) -> int:
    from . import training_checkpoint
    from .data.natural import load_image_folder
    from .models import ModelSpec, save_classifier
    from .train import PretrainConfig, pretrain_natural

    config = build(PretrainConfig, a)
    images, _, skipped = load_image_folder(a.images, channels=3, size=a.image_size)
    if skipped.count:
        print(f"skipped {skipped.count} unreadable image(s): " + "; ".join(f"{n} ({w})" for n, w in skipped.skipped[:5]))
    spec = ModelSpec(arch=a.arch, num_classes=len(images), in_channels=3, image_size=a.image_size).validate()
    checkpoint, resume = training_checkpoint.pretraining(a.out, config, spec, images, log=_log)
    print(f"pretraining {a.arch} at {a.image_size}px on {len(images)} natural images from {a.images} ({config.epochs} epochs)")
    started = time.perf_counter()
    model = pretrain_natural(images, spec=spec, config=config, on_epoch=_print_epoch, resume=resume, on_state=checkpoint.save)
    save_classifier(model, a.out, extra={"pretrain_images": str(a.images), "seconds": time.perf_counter() - started})
    checkpoint.remove()
    print(f"wrote {a.out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from . import training_checkpoint
    from .config import check_medical
    from .data.medical import load_medical
    from .models import ModelSpec, save_classifier
    from .store import Store
    from .train import TrainConfig, finetune

    config = build(TrainConfig, a)
    check_medical(a.data)
    data = load_medical(a.data, size=a.image_size)
    backbone = None if a.backbone in (None, "", "none") else a.backbone
    normalize = a.normalize or _default_normalize(backbone, a.arch)
    spec = ModelSpec(arch=a.arch, num_classes=data.num_classes, in_channels=data.channels, image_size=a.image_size,
                     normalize=normalize, class_names=data.class_names).validate()
    data = data.resized(a.image_size)
    regime = f"transfer learning from {backbone}" if backbone else "random initialization"
    checkpoint, resume = training_checkpoint.finetuning(a.out, config, spec, data, backbone, log=_log)
    print(f"training {a.arch} ({data.channels}-channel, {a.image_size}px) on {a.data} by {regime}, {config.epochs} epochs")
    model, metrics = finetune(data, spec=spec, config=config, backbone_weights=backbone, on_epoch=_print_epoch,
                              resume=resume, on_state=checkpoint.save)
    save_classifier(model, a.out, extra=metrics)
    store, name = Store.beside(a.out.with_suffix(".json"))
    store.write_text(name, json.dumps({**metrics, "data": str(a.data), "backbone": backbone}, indent=2))
    checkpoint.remove()
    print(f"test accuracy {metrics['test_accuracy']:.3f}; wrote {a.out}")
    return 0


def _default_normalize(backbone: str | None, arch: str) -> str:
    """Input normalization the backbone was trained with: its own for a raylab checkpoint, the architecture's for
    ImageNet weights (torchvision's mean/std, EfficientNet-Lite's)."""
    from .models import IMAGENET_NORMALIZE, checkpoint_spec

    if backbone is None:
        return "none"
    spec = checkpoint_spec(backbone) if backbone != "imagenet" else None
    return spec.normalize if spec is not None else IMAGENET_NORMALIZE.get(arch, "imagenet")


def cmd_uap(a: argparse.Namespace) -> int:
    from .config import UAPConfig
    from .run import run_uap
    from .telemetry import Telemetry, run_tags, served

    config = build(UAPConfig, a)
    _note_ignored([config.method], a)
    with served(a.metrics_port, a.metrics_host, a.metrics_linger, log=_log) as sink:
        record = run_uap(config, telemetry=Telemetry(sink, **run_tags(out=config.out, source=config.source, model=config.model)),
                         log=_log)
    print(record.summary())
    print(f"wrote {config.out}/uap.npy, metrics.json, uap.png, confusion.png" + (", examples.png" if config.examples else ""))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .config import EvaluateConfig
    from .evaluate_uap import evaluate_uap

    config = build(EvaluateConfig, a)
    result = evaluate_uap(config)
    print(result.summary())
    if config.out:
        print(f"wrote {config.out}/metrics.json, confusion.png")
    return 0


def cmd_shard(a: argparse.Namespace) -> int:
    from .data.shards import write_shards

    _check_cpus_per_task(a)
    if a.out and a.out_option and a.out != a.out_option:
        raise InputError(f"two outputs given ({a.out} and --out {a.out_option}): give one")
    out = a.out or a.out_option
    if not out:
        raise InputError("no output location: give it after the source, or as --out")
    mapper = _ray_mapper(a, "one shard task") if a.ray else None
    source = a.source if "://" in a.source else Path(a.source)
    m = write_shards(source, out, shard_size=a.shard_size, sample=a.sample, seed=a.seed, size=a.image_size,
                     channels=a.channels, split=a.split, progress=True, image_format=a.image_format, mapper=mapper)
    print(f"wrote {m.total} images in {len(m.shards)} shard(s) to {out}" + (f"; skipped {len(m.skipped)} unreadable" if m.skipped else ""))
    return 0


def _check_cpus_per_task(a: argparse.Namespace) -> None:
    if a.cpus_per_task <= 0:
        raise InputError(f"--cpus-per-task must be > 0, got {a.cpus_per_task}")


def _ray_mapper(a: argparse.Namespace, task: str) -> Any:
    """``ray_map`` of ``--cpus-per-task`` CPUs on the cluster of ``--address`` (a local Ray that cannot hold one task
    is refused at once)."""
    from functools import partial

    _local_ray_on_loopback(a.address)
    from .engine.capacity import refuse_on_local_ray
    from .engine.sharding import ray_map

    if _init_ray(a.address):
        refuse_on_local_ray(f"--cpus-per-task {a.cpus_per_task:g}: {task} would", a.cpus_per_task,
                            fix="lower --cpus-per-task")
    return partial(ray_map, cpus=a.cpus_per_task)


def cmd_index_shards(a: argparse.Namespace) -> int:
    from .data.shards import index_shards
    from .data.shards.index import shard_names

    _check_cpus_per_task(a)
    if a.threads < 1:
        raise InputError(f"--threads must be >= 1, got {a.threads}")
    mapper = None
    if a.ray:
        shard_names(a.location)  # a location without shards is refused before a Ray starts
        mapper = _ray_mapper(a, "one shard task")
    m, without_image = index_shards(a.location, progress=True, threads=a.threads, mapper=mapper)
    print(f"indexed {m.total} samples in {len(m.shards)} shard(s) at {a.location}: wrote {a.location.rstrip('/')}/"
          f"manifest.json" + (f"; {without_image} sample(s) hold no image and will be skipped" if without_image else ""))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    _local_ray_on_loopback(a.address)
    from .config import EngineConfig
    from .engine import run_engine

    config = build(EngineConfig, a)
    _note_ignored([config.method], a)
    record = run_engine(config, log=_log, connect=lambda: _init_ray(a.address))
    print(record.summary(), flush=True)
    print(f"wrote {config.out}: uap.npy, metrics.json, checkpoint.pt, uap.png, confusion.png" + (", examples.png" if config.examples else ""))
    return 0


def _note_ignored(methods: Sequence[str], a: argparse.Namespace) -> None:
    """Say which settings given on the command line the run's methods do not read (``--eps`` for sgd)."""
    from .config import ignored_settings

    note = ignored_settings(methods, getattr(a, "_given", ()))
    if note:
        _log(note)


def _local_ray_on_loopback(address: str | None) -> None:
    """A local Ray started by this process keeps every address on 127.0.0.1 (Ray reads this at import)."""
    if not address and "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _init_ray(address: str | None) -> bool:
    """Join --address, else the job's cluster (RAY_ADDRESS, set by `ray job submit`), else start a new local Ray;
    True when it started one (a cluster no node joins).

    A bare ``ray.init()`` would join whatever cluster `ray start` last started on this machine instead.
    """
    import ray

    if ray.is_initialized():
        return False
    given = address or os.environ.get("RAY_ADDRESS")
    if given:
        _answers(given, "--address" if address else "RAY_ADDRESS")
    ray.init(address=given or "local", logging_level="ERROR")
    _sigterm_as_ctrl_c()  # again: Ray's core replaces the handler with one that dumps a C++ stack and aborts
    return not given


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (`ray job stop`, `kill`, a node being drained) takes Ctrl-C's path: what is done is kept (the engine
    checkpoints its last round, Tune saves its state) and said in one line."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    """Ctrl-C's handler (Python's, or Tune's while a sweep runs); KeyboardInterrupt itself where SIGINT has none: a
    process started in the background of a script, or under nohup, ignores SIGINT, and raising it there made SIGTERM
    do nothing at all."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
    else:
        raise KeyboardInterrupt


def _answers(address: str, name: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a cluster address where nothing answers: Ray keeps retrying it, a warning every few
    seconds (over six minutes in one try, until killed). ``auto`` and addresses without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"{name} {address}: no Ray cluster answers there ({e.strerror or e}); start one with `ray start "
                         f"--head`, or give no address for a local Ray") from None


def cmd_sweep(a: argparse.Namespace) -> int:
    _local_ray_on_loopback(a.address)
    from .results import SCHEMA, over_seeds, read_results, select_best, summary_table
    from .store import filesystem
    from .sweep import SweepConfig, outcome, run_sweep, tally

    config = build(SweepConfig, a)
    _note_ignored(config.methods, a)
    if _init_ray(a.address):
        from .engine.capacity import refuse_on_local_ray

        refuse_on_local_ray("one trial (its own process, its workers and readers) would", *config.largest_trial(),
                            fix="use fewer --workers or lower --cpus-per-trial/--cpus-per-worker/--cpus-per-reader",
                            gpu_fix="under --device cuda each engine worker, and each trial of 'train' or 'random', "
                                    "asks for a GPU: use --device cpu here, or fewer --workers")
    grid = run_sweep(config)
    t = tally(grid, config)
    fs, root = filesystem(config.results)  # absent when no trial wrote a row: all failed, or interrupted before one
    table = read_results(config.results, filters={"sweep": config.name}) if fs.exists(root) else SCHEMA.empty_table()
    table = select_best(table) if a.select == "best" else table
    print(summary_table(over_seeds(table) if len(config.seeds) > 1 else table))
    print(f"{t.total} trial(s), {t.failed} failed" + (f", {t.stopped} stopped early" if t.stopped else "")
          + (f", {t.unfinished} not finished" if t.unfinished else "") + f"; results in {config.results} (sweep={config.name})")
    if len(set(table["zeta"].to_pylist())) > 1:  # the rates over zeta, drawn
        print(_plot(table, "zeta", selected=a.select == "best")(f"{config.out}/{config.name}/curves.png", f"sweep {config.name}"))
    for r in grid:
        if outcome(r) == "failed":
            print(f"failed: {r.path}: {' '.join(str(r.error).split())[:300]}")
    if t.unfinished:  # Tune caught a Ctrl-C, saved its state and returned
        print(f"raylab sweep: interrupted; {INTERRUPTED['sweep']}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 1 if t.failed else 0


def cmd_import_model(a: argparse.Namespace) -> int:
    from .cards import import_model
    from .models import save_classifier

    model = import_model(a.card, a.weights)
    save_classifier(model, a.out)
    s = model.spec
    print(f"{a.weights} ({s.arch}, {s.num_classes} classes {', '.join(s.class_names)}, {s.in_channels}-channel "
          f"{s.image_size} px) checked against {a.card}; wrote {a.out}: audit it with raylab uap/generate/sweep --model {a.out}")
    return 0


def _plot(table: pa.Table, x: str, *, selected: bool) -> Callable[[str, str], str]:
    """The curves of ``table``'s rates over ``x`` (:mod:`raylab.results.curves`; nothing to draw is refused now, in
    one line), and a function that draws them into a location and says so."""
    from .figures import figure_format
    from .results.curves import SELECTED, curves, curves_png
    from .store import Store

    found = curves(table, x, chosen=SELECTED if selected else ())

    def write(location: str, title: str) -> str:
        store, name = Store.beside(location)
        store.write_bytes(name, curves_png(found, x, title=title, fmt=figure_format(location)))
        return f"plot: {location} ({len(found)} curve(s) over {x})"

    return write


def cmd_results(a: argparse.Namespace) -> int:
    from .results import filter_value, over_seeds, read_results, select_best, summary_table

    if a.plot:
        from .figures import figure_format

        figure_format(a.plot)  # a file name it cannot write is refused before the results are read
    elif "x" in getattr(a, "_given", ()):
        _log("note: --x is ignored: it is the axis of --plot, and no --plot was given")
    filters: dict = {}
    for f in a.filter:
        if "=" not in f:
            raise InputError(f"--filter takes COLUMN=VALUE, got {f!r}")
        k, v = f.split("=", 1)
        filters[k] = filter_value(k, v)
    table = read_results(a.location, filters=filters or None)
    if a.select == "best":
        table = select_best(table)
    plot = _plot(table, a.x, selected=a.select == "best") if a.plot else None
    print(summary_table(over_seeds(table) if a.over_seeds else table, columns=a.columns.split(",") if a.columns else None))
    if plot:
        print(plot(a.plot, a.location))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The Quick start: every step is skipped when its output already exists, so a rerun resumes."""
    out: Path = a.out
    backbone, model = out / "backbone.pt", out / "model.pt"
    common = ["--image-size", "64", "--arch", "resnet18"]
    if not backbone.exists() and (rc := main(["pretrain", "--images", str(a.data_dir / "imagenet-samples"),
                                               "--epochs", str(a.pretrain_epochs), "--out", str(backbone), *common])):
        return rc
    if not model.exists() and (rc := main(["train", "--data", str(a.data_dir / "pneumoniamnist.npz"), "--backbone", str(backbone),
                                           "--epochs", str(a.train_epochs), "--out", str(model), *common])):
        return rc
    return main(["audit", "--model", str(model), "--data", str(a.data_dir / "pneumoniamnist.npz"), "--natural",
                 str(a.data_dir / "imagenet-samples"), "--budget", "quick", "--out", str(out / "audit")])


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import BenchConfig, EngineBenchConfig, run_bench, run_engine_bench

    if a.engine:
        config = build(EngineBenchConfig, a)  # refused in one line before Ray starts
        _local_ray_on_loopback(None)
        _init_ray(None)
        return _print_figures(run_engine_bench(config), a.out)
    return _print_figures(run_bench(build(BenchConfig, a)), a.out)


def cmd_audit(a: argparse.Namespace) -> int:
    from .audit import AuditConfig, run_audit
    from .telemetry import served

    config = build(AuditConfig, a)
    if config.ray:
        _local_ray_on_loopback(a.address)
        from .engine.capacity import refuse_on_local_ray

        if _init_ray(a.address):
            refuse_on_local_ray(f"--cpus-per-uap {config.cpus_per_uap:g}: one UAP task would", *config.uap_task,
                                fix="lower --cpus-per-uap", gpu_fix="each UAP task asks for --gpus-per-uap of a GPU under "
                                                                   "--device cuda: use --device cpu here")
    with served(a.metrics_port, a.metrics_host, a.metrics_linger, log=_log) as sink:  # a port taken: refused first
        run_audit(config, log=_log, sink=sink)
    return 0


def _rates(text: str) -> float | dict[str, float]:
    """``970`` or ``inception_v3=1400,resnet50=1355``: update rates in images/s."""
    try:
        rates = (float(text) if "=" not in text else
                 {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate or arch=rate list: {text!r}") from None
    for rate in rates.values() if isinstance(rates, dict) else (rates,):
        if not (math.isfinite(rate) and rate > 0):
            raise argparse.ArgumentTypeError(f"a rate must be a finite number of images/s > 0, got {rate:g} in {text!r}")
    return rates


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import estimate_gpu_hours, preset, run_reproduce

    out = a.out or Path("runs/reproduce") / a.preset
    over: dict = {}
    if a.natural_a:
        over["natural_a"] = a.natural_a
    if a.natural_b:
        over["natural_b"] = a.natural_b
    if a.archs:
        over["archs"] = tuple(x.strip() for x in a.archs.split(",") if x.strip())
    if a.backbones:
        over["backbones"] = tuple(x.strip() for x in a.backbones.split(","))
    elif a.archs:
        over["backbones"] = ()  # the preset's backbones were for its own architectures
    if a.targets:
        over["targets"] = tuple(x.strip() for x in a.targets.split(",") if x.strip())
    if a.seeds is not None:
        over["seeds"] = tuple(range(a.seeds))
    if a.device:
        over["device"] = a.device
    medicals = a.medical or [None]
    if a.estimate is not None:
        c = preset(a.preset, data_dir=a.data_dir, out=out, **over, **({"medical": medicals[0]} if medicals[0] else {}))
        e = estimate_gpu_hours(c, images_per_second=a.estimate, datasets=len(medicals) if a.medical else 3)
        rate = (f"{a.estimate:g} img/s" if isinstance(a.estimate, float)
                else ", ".join(f"{k} {v:g} img/s" for k, v in a.estimate.items()))
        print(f"{a.preset}: {e['uaps']} UAPs ({e['uaps'] - e['sgd_uaps']} of the paper's method, {e['sgd_uaps']} stochastic-"
              f"gradient), {e['update_images']:,} image updates; at {rate} per GPU "
              f"about {e['gpu_hours']:.1f} GPU-hours of UAP updates (an estimate; training and evaluation not included)")
        return 0
    from .report import render_report
    from .telemetry import served

    studies = [(out if len(medicals) == 1 else out / Path(medical).stem, medical) for medical in medicals]
    configs = [(dest, preset(a.preset, data_dir=a.data_dir, out=dest, **over, **({"medical": medical} if medical else {})))
               for dest, medical in studies]  # every study checked before any starts
    with served(a.metrics_port, a.metrics_host, a.metrics_linger, log=_log) as sink:
        for dest, c in configs:
            study = run_reproduce(c, sink=sink)
            path = render_report(dest, a.report if len(medicals) == 1 and a.report else dest / "report")
            total = f" ({study['seconds'] / 60:.1f} min over its {study['runs']} runs)" if study["runs"] > 1 else ""
            print(f"study done in {study['last_run_seconds'] / 60:.1f} min{total}; report: {path}", flush=True)
    return 0


def cmd_dashboard(a: argparse.Namespace) -> int:
    from . import dashboards

    if a.action == "write":
        print(f"wrote {dashboards.write_dashboards(a.out)}")
    elif a.action == "prometheus-config":
        print(dashboards.prometheus_config(sd_file=a.sd_file or dashboards.RAY_SD_FILE, targets=a.target,
                                           scrape_interval=a.scrape_interval), end="")
    else:
        counts = dashboards.render(a.prometheus, a.out, start=time.time() - a.since, run=a.run)
        empty = [t for t, n in counts.items() if not n]
        print(f"wrote {a.out}: {len(counts)} panels" + (f"; no data for: {', '.join(empty)}" if empty else ""))
    return 0


def _print_figures(figures: dict, out: Path | None) -> int:
    from .bench import write_figures

    write_figures(figures, out)
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "train": cmd_train, "uap": cmd_uap, "evaluate": cmd_evaluate, "shard": cmd_shard,
            "index-shards": cmd_index_shards, "generate": cmd_generate, "sweep": cmd_sweep, "results": cmd_results,
            "demo": cmd_demo, "bench": cmd_bench,
            "dashboard": cmd_dashboard, "reproduce": cmd_reproduce, "import-model": cmd_import_model, "audit": cmd_audit}


#: What an interrupted command (Ctrl-C, or SIGTERM) keeps, said in its one last line.
INTERRUPTED = {
    "generate": "rerun with the same --out to resume",
    "train": "its last checkpoint is kept (<out>.partial, at the end of an epoch, every --checkpoint-seconds): rerun the "
             "same command to resume",
    "pretrain": "its last checkpoint is kept (<out>.partial, at the end of an epoch, every --checkpoint-seconds): rerun "
                "the same command to resume",
    "uap": "its last checkpoint is kept (at the end of a pass, every --checkpoint-seconds): rerun the same command to resume",
    "sweep": "finished trials are kept: rerun the same command to resume",
    "audit": "every UAP finished so far is kept, the one under way at its last checkpoint: rerun the same command to resume",
    "reproduce": "every model, selection and UAP finished so far is kept, the one under way at its last checkpoint: rerun the "
                 "same command to resume",
    "demo": "every step finished so far is kept, the one under way at its last checkpoint: rerun to resume",
    "shard": "the manifest is written last, so no run reads the half-written location: rerun to write it",
}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command killed by Ctrl-C


def _given(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """The options set on the command line (their dests), as ``--eps 0.01`` or ``--eps=0.01``."""
    flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    return {parser._option_string_actions[f].dest for f in flags if f in parser._option_string_actions}


def _one_value_hint(parser: argparse.ArgumentParser, words: list[str], unknown: list[str]) -> str:
    """`` (--seeds takes one value: ...)`` when the first unknown word follows an option of one value and its value
    (``raylab audit --seeds 0 1 2``, written as a sweep's list of seeds), else ``""``."""
    for i in range(2, len(words)):
        action = parser._option_string_actions.get(words[i - 2])
        if words[i] == unknown[0] and action is not None and action.nargs is None and action.option_strings:
            return f" ({words[i - 2]} takes one value: {(action.help or '').replace('%%', '%')})"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), "")
    args, unknown = _parser(command if command in HELP else "").parse_known_args(words)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}" + _one_value_hint(args._parser, words, unknown))
    args._given = _given(args._parser, words)
    _sigterm_as_ctrl_c()
    try:
        return COMMANDS[args.command](args)
    except RaylabError as e:
        print(f"raylab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = INTERRUPTED.get(args.command)
        print(f"raylab {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return INTERRUPTED_EXIT
    except BrokenPipeError:  # `raylab results … | head`: the reader has all it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one when Python flushes stdout at exit
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

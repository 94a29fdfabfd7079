"""``raylab reproduce``: the paper's whole study, as an audit of the paper's models, from one command.

For the medical dataset and each architecture (Sections 2.1-2.3): pretrain a
backbone on natural photos (the offline stand-in for ImageNet weights) and
fine-tune it (transfer learning), plus a model from random initialization for
the first architecture (Section 3.3); pick ε and p per model and source kind
on the medical *validation* split (the paper's grid search, Section 2.2,
never on the test set); then build non-targeted UAPs over the ζ grid from the
medical training set, natural set A, natural set B and a label-balanced
variant of A, targeted UAPs for the paper's classes, the random controls, the
cross-architecture matrix and the predicted-label composition of the natural
sets (Tables S1-S3).

Every UAP of the study is one :func:`raylab.run.run_uap` — the same
pipeline as ``raylab uap``, handed the models and images loaded once — and so
one :class:`~raylab.record.RunRecord`, one ``uaps/<trial>/`` folder and one
row of the Parquet results (:mod:`raylab.results`). Every step's output is
kept, so an interrupted study resumes where it stopped; a rerun with other
settings in the same folder is refused. :mod:`raylab.report` renders the
report. Natural images are converted to gray for gray models, as in the paper.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .selection import best, select_on_validation, validation_images
from .run import SourceImages, load_source, run_uap, with_balance
from .config import SOURCE_RANDOM, SOURCE_TRAIN, UAPConfig, check, finite, missing, norm
from .core import fooling_rate, label_composition, predict_labels
from .data.medical import MedicalSet, load_medical
from .errors import InputError
from .evaluation import by_class
from .models import ModelSpec, save_classifier
from .progress import bar as progress_bar
from .record import ResultsKey, trial_folder, trial_uap
from .store import Store, guard_resume
from .target import Target, load_target, resolve_target
from .telemetry import Sink, Telemetry, run_tags

SOURCES = ("train", "natural_a", "natural_b", "random")
#: The paper's classes for targeted UAPs (Section 3.2): the most significant case and the control.
PAPER_TARGETS = {"pneumonia": ("PNEUMONIA", "NORMAL"), "oct": ("CNV", "NM"), "skin": ("MEL", "NV")}


@dataclass(frozen=True, kw_only=True)
class ReproduceConfig:
    """One reproduction: the data, the models, the grids and where everything goes."""

    preset: str
    out: Path
    medical: Path
    natural_a: Path
    natural_b: Path
    archs: tuple[str, ...] = ("resnet18", "small_cnn")
    image_size: int = 64
    pretrain_images: int | None = None
    pretrain_epochs: int = 30
    train_epochs: int = 3
    scratch: bool = True
    natural_limit: int | None = None
    train_limit: int = 1000
    zetas: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.16)
    paper_zeta: float = 0.04
    scratch_zeta: float = 0.08
    eps_grid: tuple[float, ...] = (0.002, 0.004, 0.008, 0.016)
    p_grid: tuple[str, ...] = ("2", "inf")
    max_passes: int = 2
    batch_size: int = 32
    targets: tuple[str, ...] = ("PNEUMONIA", "NORMAL")
    balanced: bool = True
    cross_arch: bool = True
    #: Per architecture: ``"natural"`` (pretrain on natural set A, the exemplar stand-in for ImageNet weights),
    #: ``"imagenet"`` (real ImageNet weights: EfficientNet-Lite0's packaged ones offline, torchvision's online) or a
    #: torchvision ``.pth`` file. Empty: all ``"natural"`` (all ``"imagenet"`` when ``pretrain_epochs`` is 0).
    backbones: tuple[str, ...] = ()
    device: str = "cpu"
    seed: int = 0
    #: Seeds of every UAP (its image order; the random control's noise): each number of the report is the mean ±
    #: sd over them, for both methods. One seed is one sample, not a result.
    seeds: tuple[int, ...] = (0, 1, 2)
    #: The stochastic-gradient UAPs beside the paper's method (Figures 1, 3 and Table 1).
    sgd_sources: tuple[str, ...] = ("train", "natural_a")
    sgd_zetas: tuple[float, ...] = (0.04, 0.08)
    sgd_epochs: int = 5
    #: The stochastic-gradient method's first steps (fractions of the radius), chosen on validation with p: no one
    #: step suits every model (cpu-small's third EfficientNet-Lite0, p = ∞: test R_f 25.2 ± 6.8 % at lr 1, 49.1 ± 2.6 %
    #: at 0.5; its ResNet-18: 42.6 ± 1.0 % at lr 1, 36.5 ± 12.9 % at 0.5; ``benchmarks/sgd_lr.py``, 3 seeds).
    sgd_lrs: tuple[float, ...] = (0.5, 1.0)

    def __post_init__(self) -> None:
        absent = [f"{what} {missing(p)}" for what, p in (("medical dataset", self.medical), ("natural set A", self.natural_a),
                                                          ("natural set B", self.natural_b)) if not Path(p).exists()]
        check(not absent, "; ".join(absent))
        check(bool(self.archs), "give at least one architecture")
        for z in (*self.zetas, self.paper_zeta, self.scratch_zeta):
            finite("zeta", z)
            check(0 < z <= 1, f"zeta must be in (0, 1], got {z}")
        check(self.paper_zeta in self.zetas, f"paper_zeta {self.paper_zeta} must be one of the zetas {self.zetas}")
        for e in self.eps_grid:
            finite("eps", e)
            check(e > 0, f"eps must be > 0, got {e}")
        for p in self.p_grid:
            norm(p)
        check(not self.backbones or len(self.backbones) == len(self.archs),
              f"{len(self.backbones)} backbone weights for {len(self.archs)} architectures")
        check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"give one or more distinct seeds, got {self.seeds}")
        check(set(self.sgd_sources) <= set(SOURCES) - {"random"},
              f"sgd_sources must be among train, natural_a, natural_b, got {self.sgd_sources}")
        check(self.sgd_epochs >= 1 and bool(self.sgd_lrs) and all(lr > 0 for lr in self.sgd_lrs),
              "sgd_epochs must be >= 1 and sgd_lrs one or more steps > 0")
        if not self.backbones:
            object.__setattr__(self, "backbones", ("natural" if self.pretrain_epochs else "imagenet",) * len(self.archs))
        check(self.pretrain_epochs > 0 or "natural" not in self.backbones,
              "a backbone pretrained on natural images needs pretrain_epochs > 0")

    def backbone(self, arch: str) -> str:
        """Where ``arch``'s transfer-learning weights come from: ``natural``, ``imagenet`` or a file."""
        return dict(zip(self.archs, self.backbones))[arch]

    def normalize(self, arch: str) -> str:
        """The input normalization of ``arch``'s models (transfer and scratch alike): what its ImageNet weights
        expect, none for the natural-image pretraining (which learns its own)."""
        from .models import IMAGENET_NORMALIZE

        return "none" if self.backbone(arch) == "natural" else IMAGENET_NORMALIZE.get(arch, "imagenet")

    @property
    def sweep(self) -> str:
        """The results sweep every UAP of this study is a row of."""
        return f"reproduce-{self.preset}"


def preset(name: str, *, data_dir: Path, out: Path, **overrides: Any) -> ReproduceConfig:
    """``tiny`` (the test suite), ``cpu-small`` (a 2-core CPU, about 70 min) or ``paper`` (a GPU cluster)."""
    data_dir = Path(data_dir)
    base = dict(out=Path(out), medical=data_dir / "pneumoniamnist.npz", natural_a=data_dir / "imagenet-samples",
                natural_b=data_dir / "flickr8k-samples")
    presets: dict[str, dict[str, Any]] = {
        "tiny": dict(archs=("small_cnn",), image_size=28, pretrain_images=100, pretrain_epochs=2, train_epochs=1,
                     natural_limit=60, train_limit=200, zetas=(0.04, 0.08), eps_grid=(0.01, 0.02), p_grid=("2",),
                     max_passes=2, targets=("PNEUMONIA",), cross_arch=False, sgd_zetas=(0.04, 0.08),
                     seeds=(0, 1), sgd_epochs=3),
        # Real ImageNet weights (EfficientNet-Lite0's packaged ones) and their from-scratch twin, beside the ResNet-18
        # pretrained on the 1,000 photos (the offline stand-in of before): Section 3.3 on the real thing.
        # One pass, as the paper's runs, and five ζ: 189 UAPs; the whole study took 70 minutes on 2 cores (README).
        "cpu-small": dict(archs=("efficientnet_lite0", "resnet18"), backbones=("imagenet", "natural"), train_epochs=4,
                          zetas=(0.02, 0.04, 0.08, 0.12, 0.16), eps_grid=(0.004, 0.008, 0.016, 0.032), max_passes=1,
                          sgd_epochs=3),
        "paper": dict(archs=("inception_v3", "resnet50", "vgg16"), image_size=299, pretrain_epochs=0, train_epochs=10,
                      natural_limit=100_000, train_limit=0, eps_grid=(0.0005, 0.0013, 0.0026, 0.005), p_grid=("2", "inf"),
                      max_passes=1, batch_size=256, device="cuda", sgd_sources=("train", "natural_a", "natural_b"),
                      sgd_zetas=(0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.16), sgd_epochs=1),
    }
    if name not in presets:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(presets)}")
    return ReproduceConfig(preset=name, **{**base, **presets[name], **overrides})


# --------------------------------------------------------------------------- the study's state


@dataclass
class Context:
    """What the steps share: the config, the models (as audit targets), the sources, and the results so far."""

    config: ReproduceConfig
    store: Store
    medical: MedicalSet
    targets: dict[str, Target] = field(default_factory=dict)
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean: dict[str, Tensor] = field(default_factory=dict)
    #: Per model key, the test labels under each random control predicted so far (``run_uap``'s ``controls``).
    controls: dict[str, dict[tuple, Tensor]] = field(default_factory=dict)
    sources: dict[tuple[str, str], SourceImages] = field(default_factory=dict)
    log: Callable[[str], None] = print
    #: Where the UAPs' metrics go (``raylab reproduce --metrics-port``); none by default.
    sink: Sink | None = None

    def clean_test_labels(self, key: str) -> Tensor:
        """C(x) of the medical test images for model ``key``: computed once, they do not depend on ρ."""
        if key not in self.clean:
            self.clean[key] = predict_labels(self.targets[key].model, self.medical.test_images)
        return self.clean[key]


#: One UAP of the study: (model key, source, ζ, target, method, seed).
Job = tuple[str, str, float, str | None, str, int]


def trial_id(key: str, source: str, zeta: float, target: str | None, method: str = "paper", seed: int = 0) -> str:
    """The results row's id of one UAP of the study: ``resnet18-transfer-natural_a-z0.04-u@paper1`` for the
    paper's method with seed 1, ``...-u@sgd1`` for the stochastic-gradient one."""
    return f"{key}-{source}-z{zeta:g}-{target or 'u'}@{method}{seed}"


def model_path(out: Path, key: str) -> Path:
    """Where model ``key`` (``<arch>-<regime>``) is, in the study folder ``out`` as it is now (see
    :func:`raylab.record.trial_uap`)."""
    return Path(out) / "models" / f"{key}.pt"


def parse_trial(trial: str) -> dict[str, Any]:
    """The inverse of :func:`trial_id`: arch, regime, source, ζ, target (None for non-targeted), method and seed."""
    base, _, run = trial.partition("@")
    arch, regime, source, zeta, target = base.split("-", 4)
    method = run.rstrip("0123456789") or "paper"  # no suffix: a paper's-method row of an earlier version, one seed
    return {"arch": arch, "regime": regime, "model": f"{arch}-{regime}", "source": source, "zeta": float(zeta[1:]),
            "target": None if target == "u" else target, "method": method, "seed": int(run[len(method):] or 0)}


def uap_config(ctx: Context, key: str, source: str, *, zeta: float, p: str, eps: float, target: str | None,
               out: Path, method: str = "paper", seed: int | None = None, lr: float | None = None) -> UAPConfig:
    """The ``raylab uap`` configuration of one UAP of the study (the stochastic-gradient one with ``method="sgd"``,
    its first step ``lr``: the last of ``sgd_lrs`` unless given)."""
    c = ctx.config
    location = {"train": SOURCE_TRAIN, "random": SOURCE_RANDOM, "natural_a": str(c.natural_a),
                "natural_a_balanced": str(c.natural_a), "natural_b": str(c.natural_b)}[source]
    limit = (c.train_limit or None) if source == "train" else c.natural_limit
    sgd = (dict(method="sgd", lr=c.sgd_lrs[-1] if lr is None else lr, max_passes=c.sgd_epochs) if method == "sgd"
           else dict(max_passes=c.max_passes))
    return UAPConfig(model=ctx.model_info[key]["path"], medical=c.medical, source=location, out=out, p=p, zeta=zeta,
                     eps=eps, target=target, batch_size=c.batch_size, seed=c.seed if seed is None else seed,
                     device=c.device, examples=0, limit=limit, balance=source == "natural_a_balanced", **sgd)


def source_images(ctx: Context, key: str, source: str, config: UAPConfig) -> SourceImages:
    """The source of one UAP, loaded once per source (and per model for the label-balanced one, which depends on
    the model's predictions)."""
    cache = (source, key if config.balance else "")
    config = dataclasses.replace(config, seed=ctx.config.seed)  # the images are the study's, whatever the UAP's seed
    if cache not in ctx.sources:
        if config.balance:
            base = source_images(ctx, key, "natural_a", uap_config(ctx, key, "natural_a", zeta=config.zeta, p=str(config.p),
                                                                  eps=config.eps, target=None, out=config.out))
            assert base.images is not None
            ctx.sources[cache] = with_balance(config, ctx.targets[key], base.images, base.source)
        else:
            ctx.sources[cache] = load_source(config, ctx.targets[key])
    return ctx.sources[cache]


def select_eps_p(ctx: Context, key: str, kind: str, method: str = "paper") -> dict[str, Any]:
    """Section 2.2's grid search over ε and p at the paper's ζ, scored on the medical validation split
    (:func:`raylab.selection.select_on_validation`, as every audit does).

    For the stochastic-gradient method the grid is its first step (``sgd_lrs``, fractions of the radius) x p.
    """
    c, target = ctx.config, ctx.targets[key]
    source = "natural_a" if kind == "natural" else "train"
    probe = uap_config(ctx, key, source, zeta=c.paper_zeta, p="2", eps=c.eps_grid[0], target=None, out=c.out)
    images = source_images(ctx, key, source, probe).images
    assert images is not None
    steps = ([dict(eps=eps) for eps in c.eps_grid] if method == "paper" else
             [dict(eps=c.eps_grid[0], lr=lr) for lr in c.sgd_lrs])
    candidates = [uap_config(ctx, key, source, zeta=c.paper_zeta, p=p_text, target=None, out=c.out, method=method, **step)
                  for p_text in c.p_grid for step in steps]
    val, _ = validation_images(target, c.seed)
    grid = select_on_validation(target, images, val, candidates, zeta=c.paper_zeta, seeds=c.seeds)  # the UAPs' images
    pick = best(grid)
    step = f"eps={pick['eps']:g}" if method == "paper" else f"lr={pick['lr']:g}"
    ctx.log(f"  {key} {kind} ({method}): {step} p={pick['p']} (validation R_f {pick['val_fooling_rate']:.3f} ± "
            f"{pick['val_fooling_rate_sd']:.3f} over {len(pick['val_per_seed'])} seeds)")
    return {"p": pick["p"], "eps": pick["eps"], "lr": pick["lr"], "grid": grid}


def selection_key(key: str, source: str, method: str) -> str:
    """Which ε, p selection a UAP uses: per model, source kind (training or natural images) and method."""
    kind = "train" if source == "train" else "natural"
    return f"{key}/{kind}" if method == "paper" else f"{key}/{kind}/sgd"


def run_one(ctx: Context, key: str, source: str, zeta: float, target: str | None, method: str = "paper",
            seed: int = 0) -> None:
    """One UAP (or random control) of the study on model ``key``: one ``raylab uap`` run and one results row."""
    sel = ctx.selected[selection_key(key, source, method)]
    trial = trial_id(key, source, zeta, target, method, seed)
    config = uap_config(ctx, key, source, zeta=zeta, p=sel["p"], eps=sel["eps"], target=target,
                        out=trial_folder(ctx.config.out, trial), method=method, seed=seed, lr=sel.get("lr"))
    budget = ctx.targets[key].with_budget(zeta=zeta, p=config.p, target=target)
    telemetry = Telemetry(ctx.sink, **run_tags(out=trial, source=config.source, model=config.model))
    run_uap(config, target=budget, source=source_images(ctx, key, source, config), clean=ctx.clean_test_labels(key),
            controls=ctx.controls.setdefault(key, {}), progress=False, figures=False,
            results=ResultsKey(str(ctx.config.out / "results"), ctx.config.sweep, trial), telemetry=telemetry)
    Telemetry(ctx.sink).trial_done(sweep=ctx.config.sweep, status="finished")  # one series per study, not per UAP


# --------------------------------------------------------------------------- models


def _train_models(ctx: Context) -> None:
    from . import training_checkpoint
    from .data.natural import load_image_folder
    from .train import TrainConfig, epoch_line, finetune, pretrain_natural

    c, m = ctx.config, ctx.medical
    models = ctx.store.child("models")

    def on_epoch(row: dict) -> None:  # training a model takes minutes on a CPU: one line per epoch says how far it is
        ctx.log(f"    {epoch_line(row)}")

    rgb = None
    plan = [(arch, "transfer") for arch in c.archs] + ([(c.archs[0], "scratch")] if c.scratch else [])
    for arch, regime in plan:
        key = f"{arch}-{regime}"
        path = model_path(c.out, key)
        spec = ModelSpec(arch=arch, num_classes=m.num_classes, in_channels=m.channels, image_size=c.image_size,
                         normalize=c.normalize(arch), class_names=m.class_names)
        # A model is done only when both its weights and its report are there (its report is written last).
        if not (models.exists(f"{key}.pt") and models.exists(f"{key}.json")):
            backbone: str | Path | None = None
            if regime == "transfer" and c.backbone(arch) != "natural":
                backbone = c.backbone(arch)  # ImageNet weights: "imagenet" (packaged, or torchvision's) or a .pth file
            elif regime == "transfer":
                backbone = Path(models.path(f"{arch}-backbone.pt"))
                if not backbone.exists():
                    if rgb is None:
                        rgb, _, _ = load_image_folder(c.natural_a, channels=3, size=c.image_size, limit=c.pretrain_images, seed=c.seed)
                    ctx.log(f"pretraining {arch} on {len(rgb)} natural photos ({c.pretrain_epochs} epochs)")
                    bspec = ModelSpec(arch=arch, num_classes=len(rgb), in_channels=3, image_size=c.image_size).validate()
                    pretrain = TrainConfig(epochs=c.pretrain_epochs, balanced=False, seed=c.seed, device=c.device)
                    checkpoint, resume = training_checkpoint.pretraining(backbone, pretrain, bspec, rgb, log=ctx.log)
                    save_classifier(pretrain_natural(rgb, spec=bspec, config=pretrain, on_epoch=on_epoch, resume=resume,
                                                     on_state=checkpoint.save), backbone)
                    checkpoint.remove()
            ctx.log(f"training {key} ({'transfer learning' if backbone else 'random initialization'}, {c.train_epochs} epochs)")
            train = TrainConfig(epochs=c.train_epochs, seed=c.seed, device=c.device)
            checkpoint, resume = training_checkpoint.finetuning(path, train, spec, m, backbone, log=ctx.log)
            model, metrics = finetune(m, spec=spec, config=train, backbone_weights=backbone, on_epoch=on_epoch,
                                      resume=resume, on_state=checkpoint.save)
            save_classifier(model, path, extra={"test_accuracy": metrics["test_accuracy"], "regime": regime})
            models.write_text(f"{key}.json", json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2, default=str))
            checkpoint.remove()
        info = json.loads(models.read_text(f"{key}.json"))
        ctx.targets[key] = load_target(path, c.medical, target=None, zeta=c.paper_zeta, p=2, device=c.device)
        origin = "random initialization" if regime == "scratch" else (
            f"pretrained on natural set A ({c.pretrain_epochs} epochs)" if c.backbone(arch) == "natural" else
            "ImageNet weights" if c.backbone(arch) == "imagenet" else f"weights {Path(c.backbone(arch)).name}")
        ctx.model_info[key] = {"arch": arch, "regime": regime, "path": path, "test_accuracy": info["test_accuracy"],
                               "origin": origin}
        ctx.log(f"  {key}: test accuracy {info['test_accuracy']:.3f}")


# --------------------------------------------------------------------------- the study


def study_jobs(c: ReproduceConfig) -> list[Job]:
    """Every UAP the study needs: (model key, source, ζ, target, method, seed)."""
    jobs = [(*job, "paper", seed) for job in _paper_jobs(c) for seed in c.seeds]
    first = f"{c.archs[0]}-transfer"
    sgd: list[tuple[str, str, float, str | None]] = [(first, s, z, None) for z in c.sgd_zetas for s in c.sgd_sources]  # Figure 1
    sgd += [(f"{a}-transfer", s, c.paper_zeta, None) for a in c.archs for s in c.sgd_sources]  # Figure 3
    sgd += [(f"{a}-transfer", s, c.paper_zeta, t) for a in c.archs for t in c.targets for s in c.sgd_sources]  # Table 1
    jobs += [(*job, "sgd", seed) for job in dict.fromkeys(sgd) for seed in c.seeds]
    return jobs


def _paper_jobs(c: ReproduceConfig) -> list[tuple[str, str, float, str | None]]:
    jobs: list[tuple[str, str, float, str | None]] = []
    first = f"{c.archs[0]}-transfer"
    for zeta in c.zetas:
        jobs += [(first, s, zeta, None) for s in SOURCES]  # Figure 1
    for arch in c.archs[1:]:
        jobs += [(f"{arch}-transfer", s, c.paper_zeta, None) for s in SOURCES]  # Figure 3
    for arch in c.archs:
        if c.balanced:
            jobs.append((f"{arch}-transfer", "natural_a_balanced", c.paper_zeta, None))
        for target in c.targets:  # Table 1
            jobs += [(f"{arch}-transfer", s, c.paper_zeta, target) for s in SOURCES]
            if c.balanced:
                jobs.append((f"{arch}-transfer", "natural_a_balanced", c.paper_zeta, target))
    if c.scratch:  # Table 2
        jobs += [(f"{c.archs[0]}-scratch", s, c.scratch_zeta, None) for s in ("train", "natural_a", "random")]
        jobs += [(f"{c.archs[0]}-transfer", s, c.scratch_zeta, None) for s in ("train", "natural_a", "random")
                 if c.scratch_zeta not in c.zetas]
    return list(dict.fromkeys(jobs))


def _cross_arch(ctx: Context) -> list[dict[str, Any]]:
    """R_f of the natural-set-A UAP made on architecture A, applied to architecture B (a gray-box attack), per seed."""
    c = ctx.config
    out = []
    for a in c.archs:
        for seed in c.seeds:
            rho = torch.from_numpy(np.load(trial_uap(c.out, trial_id(f"{a}-transfer", "natural_a", c.paper_zeta, None,
                                                                    "paper", seed))))
            for b in c.archs:
                key = f"{b}-transfer"
                adv = predict_labels(ctx.targets[key].model, ctx.medical.test_images, rho=rho)
                out.append({"made_on": a, "applied_to": b, "seed": seed,
                            "fooling_rate": fooling_rate(ctx.clean_test_labels(key), adv)})
    return out


def _composition(ctx: Context) -> list[dict[str, Any]]:
    """Tables S1-S3: the share of each natural set (and the training images) per predicted label, per model."""
    out = []
    names = ctx.medical.class_names
    for key, target in ctx.targets.items():
        for s in ("natural_a", "natural_b", "train"):
            config = uap_config(ctx, key, s, zeta=ctx.config.paper_zeta, p="2", eps=ctx.config.eps_grid[0], target=None,
                                out=ctx.config.out)
            images = source_images(ctx, key, s, config).images
            assert images is not None
            comp = label_composition(predict_labels(target.model, images), num_classes=len(names))
            out.append({"model": key, "source": s, **by_class(comp, names)})
    return out


def _identity(c: ReproduceConfig) -> dict[str, Any]:
    """What a resumed study must share with the study it resumes (where it writes may change)."""
    return {k: v for k, v in asdict(c).items() if k != "out"}


def run_reproduce(config: ReproduceConfig, *, log: Callable[[str], None] = print,
                  sink: Sink | None = None) -> dict[str, Any]:
    """Run (or resume) the study; returns the summary the report is rendered from (also ``study.json``).

    ``seconds`` is the wall time summed over the runs of the command that finished (``runs``), so a rerun that
    resumes the study, or only renders its report again, adds its own time (``last_run_seconds``) instead of
    replacing the study's."""
    from .results import read_results

    c = config
    store = Store.at(c.out)
    store.makedirs()
    started = time.perf_counter()
    medical = load_medical(c.medical, size=c.image_size)
    targets = tuple(medical.class_names[resolve_target(t, medical.class_names)] for t in c.targets)  # names or indices
    c = dataclasses.replace(c, targets=targets)
    guard_resume(store, "study-config.json", _identity(c), what=f"the study in {c.out}",
                 hint="use a new --out, or the settings it was started with")
    ctx = Context(c, store, medical, log=log, sink=sink)
    log(f"medical data: {c.medical}: {medical.summary()}")
    _train_models(ctx)
    for s, loc in (("natural_a", c.natural_a), ("natural_b", c.natural_b)):
        first = next(iter(ctx.targets))
        src = source_images(ctx, first, s, uap_config(ctx, first, s, zeta=c.paper_zeta, p="2", eps=c.eps_grid[0],
                                                      target=None, out=c.out))
        log(f"{s}: {src.source.used} images from {loc} ({'gray' if medical.channels == 1 else 'RGB'}, {c.image_size}px"
            + (f", {len(src.source.skipped)} unreadable skipped)" if src.source.skipped else ")"))
    ctx.selected = json.loads(store.read_text("selected.json")) if store.exists("selected.json") else {}
    jobs = study_jobs(c)
    for key in ctx.targets:
        for kind, source in (("natural", "natural_a"), ("train", "train")):
            for method in ("paper", "sgd"):
                name = selection_key(key, source, method)
                if name not in ctx.selected and any(j[0] == key and selection_key(j[0], j[1], j[4]) == name for j in jobs):
                    ctx.selected[name] = select_eps_p(ctx, key, kind, method)
                    store.write_text("selected.json", json.dumps(ctx.selected, indent=2))
    results = c.out / "results"
    done = set()
    if results.exists():
        done = set(read_results(results, filters={"sweep": c.sweep}).column("trial_id").to_pylist())
    for job in progress_bar(jobs, desc="UAPs", unit="uap"):
        if trial_id(*job) not in done:
            run_one(ctx, *job)  # one row per UAP, written as it finishes: a crash loses nothing
    before = json.loads(store.read_text("study.json")) if store.exists("study.json") else {}
    study = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
        "class_names": list(medical.class_names),
        "models": {k: {**v, "path": str(v["path"])} for k, v in ctx.model_info.items()},
        "selected": ctx.selected,
        "composition": _composition(ctx),
        "cross_arch": _cross_arch(ctx) if c.cross_arch and len(c.archs) > 1 else [],
        "natural_images": {s: ctx.sources[(s, "")].source.used for s in ("natural_a", "natural_b")},
    }
    last = time.perf_counter() - started
    study.update(seconds=before.get("seconds", 0.0) + last, runs=before.get("runs", 1 if before else 0) + 1,
                 last_run_seconds=last)
    store.write_text("study.json", json.dumps(study, indent=2, default=str))
    return study


def estimate_gpu_hours(config: ReproduceConfig, *, images_per_second: float | dict[str, float],
                       datasets: int = 3) -> dict[str, Any]:
    """GPU-hours of the study's UAP updates at measured update rates (training and evaluation not included).

    ``images_per_second``: one rate for every architecture, or one per architecture (``{"inception_v3": 970, ...}``;
    every architecture of the study must be there)."""
    rates = images_per_second if isinstance(images_per_second, dict) else {a: images_per_second for a in config.archs}
    missing = [a for a in config.archs if a not in rates]
    if missing:
        raise InputError(f"no update rate for {', '.join(missing)}: give one rate, or arch=rate for each of {', '.join(config.archs)}")
    jobs = study_jobs(config)
    per_source = {"train": config.train_limit or 5000, "natural_a": config.natural_limit or 100_000,
                  "natural_b": config.natural_limit or 100_000, "natural_a_balanced": config.natural_limit or 100_000, "random": 0}
    passes = {"paper": config.max_passes, "sgd": config.sgd_epochs}
    images: dict[str, int] = {a: 0 for a in config.archs}
    for key, s, _, _, m, _ in jobs:
        images[key.split("-")[0]] += per_source[s] * passes[m] * datasets
    # the ε, p selections the jobs use (per model, source kind and method): a UAP per candidate and seed on its UAPs' images
    for key, kind, method in {(j[0], "train" if j[1] == "train" else "natural_a", j[4]) for j in jobs}:
        candidates = len(config.p_grid) * len(config.eps_grid if method == "paper" else config.sgd_lrs) * len(config.seeds)
        images[key.split("-")[0]] += per_source[kind] * candidates * passes[method] * datasets
    seconds = sum(n / rates[a] for a, n in images.items())
    sgd = sum(1 for j in jobs if j[4] == "sgd") * datasets
    return {"uaps": len(jobs) * datasets, "sgd_uaps": sgd, "update_images": sum(images.values()),
            "gpu_hours": seconds / 3600, "per_arch_update_images": images}

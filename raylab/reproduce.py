"""``raylab reproduce``: the paper's whole study from one command, at CPU scale or full scale.

For the medical dataset and each architecture (Sections 2.1-2.3): pretrain a
backbone on natural photos (the offline stand-in for ImageNet weights) and
fine-tune it (transfer learning), plus a model from random initialization for
the first architecture (Section 3.3); pick ε and p per model and source kind
on the medical *validation* split (the paper's grid search, Section 2.2,
never on the test set); then build non-targeted UAPs over the ζ grid from the
medical training set, natural set A, natural set B and a label-balanced
variant of A, targeted UAPs for the paper's classes, the random controls, the
cross-architecture matrix and the predicted-label composition of the natural
sets (Tables S1-S3). Every UAP is one row of the Parquet results
(:mod:`raylab.results`) and every step's output is kept, so an interrupted
run resumes where it stopped. :mod:`raylab.report` renders the report.

Natural images are converted to gray for gray models, as in the paper.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .core import (
    UAP, Criterion, UAPResult, Targeted, Untargeted, fooling_rate, label_composition, lp_norm, predict_labels, random_sphere, zeta_radius,
)
from .core.norms import Norm, parse_norm
from .data.medical import MedicalSet, load_medical
from .data.natural import load_image_folder
from .errors import InputError
from .evaluation import by_class, report
from .models import Classifier, ModelSpec, for_inference, load_classifier, save_classifier

SOURCES = ("train", "natural_a", "natural_b", "random")
#: The paper's classes for targeted UAPs (Section 3.2): the most significant case and the control.
PAPER_TARGETS = {"pneumonia": ("PNEUMONIA", "NORMAL"), "oct": ("CNV", "NM"), "skin": ("MEL", "NV")}


@dataclass(frozen=True)
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
    select_images: int = 300
    max_passes: int = 2
    batch_size: int = 32
    targets: tuple[str, ...] = ("PNEUMONIA", "NORMAL")
    balanced: bool = True
    cross_arch: bool = True
    backbones: tuple[str, ...] = ()
    device: str = "cpu"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [f"{what} not found: {p}" for what, p in (("medical dataset", self.medical), ("natural set A", self.natural_a),
                                                             ("natural set B", self.natural_b)) if not Path(p).exists()]
        if missing:
            raise InputError("; ".join(missing))
        if not self.archs:
            raise InputError("give at least one architecture")
        for z in (*self.zetas, self.paper_zeta, self.scratch_zeta):
            if not 0 < z <= 1:
                raise InputError(f"zeta must be in (0, 1], got {z}")
        if self.paper_zeta not in self.zetas:
            raise InputError(f"paper_zeta {self.paper_zeta} must be one of the zetas {self.zetas}")
        for e in self.eps_grid:
            if not e > 0:
                raise InputError(f"eps must be > 0, got {e}")
        for p in self.p_grid:
            parse_norm(p)
        if self.backbones and len(self.backbones) != len(self.archs):
            raise InputError(f"{len(self.backbones)} backbone weights for {len(self.archs)} architectures")
        if self.pretrain_epochs == 0 and not self.backbones:
            object.__setattr__(self, "backbones", ("imagenet",) * len(self.archs))


def preset(name: str, *, data_dir: Path, out: Path, **overrides: Any) -> ReproduceConfig:
    """``tiny`` (the test suite), ``cpu-small`` (this machine, < 45 min) or ``paper`` (a GPU cluster)."""
    data_dir = Path(data_dir)
    base = dict(out=Path(out), medical=data_dir / "pneumoniamnist.npz", natural_a=data_dir / "imagenet-samples",
                natural_b=data_dir / "flickr8k-samples")
    presets: dict[str, dict[str, Any]] = {
        "tiny": dict(archs=("small_cnn",), image_size=28, pretrain_images=100, pretrain_epochs=2, train_epochs=1,
                     natural_limit=60, train_limit=200, zetas=(0.04, 0.08), eps_grid=(0.01, 0.02), p_grid=("2",),
                     select_images=60, max_passes=1, targets=("PNEUMONIA",), cross_arch=False),
        "cpu-small": dict(),
        "paper": dict(archs=("inception_v3", "resnet50", "vgg16"), image_size=299, pretrain_epochs=0, train_epochs=10,
                      natural_limit=100_000, train_limit=0, eps_grid=(0.0005, 0.0013, 0.0026, 0.005), p_grid=("2", "inf"),
                      select_images=10_000, max_passes=1, batch_size=256, device="cuda"),
    }
    if name not in presets:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(presets)}")
    return ReproduceConfig(preset=name, **{**base, **presets[name], **overrides})


# --------------------------------------------------------------------------- steps


@dataclass
class Context:
    """What the steps share: the config, the loaded data, the models, and the results so far."""

    config: ReproduceConfig
    medical: MedicalSet
    natural: dict[str, Tensor]
    models: dict[str, Classifier] = field(default_factory=dict)
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean: dict[str, Tensor] = field(default_factory=dict)
    log: Callable[[str], None] = print


def _clean_test_labels(ctx: Context, key: str) -> Tensor:
    """C(x) of the medical test images for model ``key``: computed once, they do not depend on ρ."""
    if key not in ctx.clean:
        ctx.clean[key] = predict_labels(ctx.models[key], ctx.medical.test_images)
    return ctx.clean[key]


def _radius(ctx: Context, zeta: float, p: Norm) -> float:
    return zeta_radius(ctx.medical.train_images, zeta=zeta, p=p)


def _train_subset(ctx: Context) -> Tensor:
    x = ctx.medical.train_images
    n = ctx.config.train_limit
    if n and n < len(x):
        g = torch.Generator().manual_seed(ctx.config.seed)
        x = x[torch.randperm(len(x), generator=g)[:n].sort().values]
    return x


def balanced_by_prediction(images: Tensor, predicted: Tensor, *, num_classes: int, seed: int) -> Tensor:
    """Natural images resampled (with replacement) so every predicted label is equally frequent.

    The paper's Discussion attributes the ~50 % ceiling of R_f on chest X-ray to the imbalanced predicted labels
    of natural images (Table S3) and suggests controlling that composition; this is the control.
    """
    present = [c for c in range(num_classes) if (predicted == c).any()]
    if len(present) < 2:
        return images
    g = torch.Generator().manual_seed(seed)
    per_class = len(images) // len(present)
    picks = []
    for c in present:
        idx = (predicted == c).nonzero().flatten()
        picks.append(idx[torch.randint(len(idx), (per_class,), generator=g)])
    order = torch.cat(picks)
    return images[order[torch.randperm(len(order), generator=g)]]


def _uap(model: Classifier, images: Tensor, *, radius: float, p: Norm, eps: float, criterion: Criterion,
         config: ReproduceConfig, seed: int) -> UAPResult:
    attack = UAP(radius=radius, p=p, eps=eps, max_passes=config.max_passes, mode="batched", batch_size=config.batch_size)
    return attack(model, images, criterion=criterion, seed=seed)


def select_eps_p(ctx: Context, key: str, kind: str, images: Tensor) -> dict[str, Any]:
    """Section 2.2's grid search over ε and p at the paper's ζ, scored on the medical validation split."""
    c, model = ctx.config, ctx.models[key]
    val = ctx.medical.val_images
    clean = predict_labels(model, val)
    n = min(c.select_images, len(images))
    sub = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(c.seed))[:n]]
    grid = []
    for p_text in c.p_grid:
        p = parse_norm(p_text)
        radius = _radius(ctx, c.paper_zeta, p)
        for eps in c.eps_grid:
            rho = _uap(model, sub, radius=radius, p=p, eps=eps, criterion=Untargeted(), config=c, seed=c.seed).rho
            score = fooling_rate(clean, predict_labels(model, val, rho=rho))
            grid.append({"p": p_text, "eps": eps, "val_fooling_rate": score})
    best = max(grid, key=lambda r: r["val_fooling_rate"])
    ctx.log(f"  {key} {kind}: eps={best['eps']:g} p={best['p']} (validation R_f {best['val_fooling_rate']:.3f})")
    return {"p": best["p"], "eps": best["eps"], "grid": grid}


def _evaluate(ctx: Context, key: str, rho: Tensor, *, zeta: float, p: Norm, target: str | None) -> dict[str, Any]:
    model, m = ctx.models[key], ctx.medical
    names = m.class_names
    t = None if target is None else names.index(target)
    clean = _clean_test_labels(ctx, key)
    adv = predict_labels(model, m.test_images, rho=rho)
    control = random_sphere(tuple(rho.shape), radius=_radius(ctx, zeta, p), p=p,
                            generator=torch.Generator().manual_seed(ctx.config.seed + 1))
    return report(clean, adv, predict_labels(model, m.test_images, rho=control), m.test_labels, names, t)


def _row(ctx: Context, key: str, source: str, zeta: float, p_text: str, eps: float, target: str | None,
         metrics: dict[str, Any], rho: Tensor, seconds: float, images: int, accepted: int) -> dict[str, Any]:
    from .results import row_from_metrics

    info = ctx.model_info[key]
    uap_dir = ctx.config.out / "uaps"
    uap_dir.mkdir(parents=True, exist_ok=True)
    name = f"{key}-{source}-z{zeta:g}-{target or 'untargeted'}.npy"
    np.save(uap_dir / name, rho.numpy().astype(np.float32))
    kind = source if source in ("train", "random") else "folder"
    full = {**metrics, "source": {"kind": kind, "location": _source_location(ctx, source), "skipped": 0},
            "stats": {"images": images, "accepted": accepted},
            "uap_norms": {"l2": float(lp_norm(rho[None], 2)), "linf": float(lp_norm(rho[None], "inf"))},
            "config": {"model": str(info["path"]), "medical": str(ctx.config.medical), "p": p_text, "zeta": zeta, "eps": eps,
                       "max_passes": ctx.config.max_passes, "delta": 0.0, "batch_size": ctx.config.batch_size, "step_norm": "sign",
                       "clip": False, "seed": ctx.config.seed, "device": ctx.config.device, "amp": False},
            "seconds": seconds}
    row = row_from_metrics(full, sweep=f"reproduce-{ctx.config.preset}", trial_id=trial_id(key, source, zeta, target),
                           run_id=uuid.uuid4().hex[:12], uap_uri=str(uap_dir / name), arch=info["arch"],
                           image_size=ctx.config.image_size)
    row["wall_seconds"] = seconds
    return row


def trial_id(key: str, source: str, zeta: float, target: str | None) -> str:
    """The results row's id of one UAP of the study, e.g. ``resnet18-transfer-natural_a-z0.04-u``."""
    return f"{key}-{source}-z{zeta:g}-{target or 'u'}"


def parse_trial(trial: str) -> dict[str, Any]:
    """The inverse of :func:`trial_id`: arch, regime, source, ζ and target (None for non-targeted)."""
    arch, regime, source, zeta, target = trial.split("-", 4)
    return {"arch": arch, "regime": regime, "model": f"{arch}-{regime}", "source": source, "zeta": float(zeta[1:]),
            "target": None if target == "u" else target}


def _source_location(ctx: Context, source: str) -> str:
    c = ctx.config
    return {"train": str(c.medical), "natural_a": str(c.natural_a), "natural_b": str(c.natural_b),
            "natural_a_balanced": f"{c.natural_a} (balanced by predicted label)", "random": "random"}[source]


def _images_for(ctx: Context, key: str, source: str) -> Tensor | None:
    if source == "train":
        return _train_subset(ctx)
    if source == "natural_a_balanced":
        model = ctx.models[key]
        a = ctx.natural["natural_a"]
        return balanced_by_prediction(a, predict_labels(model, a), num_classes=ctx.medical.num_classes, seed=ctx.config.seed)
    if source == "random":
        return None
    return ctx.natural[source]


def run_one(ctx: Context, key: str, source: str, zeta: float, target: str | None) -> dict[str, Any]:
    """One UAP (or random control) on model ``key``, evaluated on the test set, as a results row."""
    c = ctx.config
    kind = "train" if source == "train" else "natural"
    sel = ctx.selected[f"{key}/{kind}"]
    p = parse_norm(sel["p"])
    images = _images_for(ctx, key, source)
    started = time.perf_counter()
    radius = _radius(ctx, zeta, p)
    accepted = 0
    if images is None:
        rho = random_sphere((ctx.medical.channels, c.image_size, c.image_size), radius=radius, p=p,
                            generator=torch.Generator().manual_seed(c.seed))
    else:
        criterion: Criterion = Untargeted() if target is None else Targeted(ctx.medical.class_names.index(target))
        result = _uap(ctx.models[key], images, radius=radius, p=p, eps=sel["eps"], criterion=criterion, config=c, seed=c.seed)
        rho, accepted = result.rho, result.stats.accepted
    seconds = time.perf_counter() - started
    metrics = _evaluate(ctx, key, rho, zeta=zeta, p=p, target=target)
    return _row(ctx, key, source, zeta, sel["p"], sel["eps"], target, metrics, rho, seconds,
                0 if images is None else len(images), accepted)


# --------------------------------------------------------------------------- models


def _train_models(ctx: Context) -> None:
    from .train import TrainConfig, finetune, pretrain_natural

    c, m = ctx.config, ctx.medical
    models_dir = c.out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    rgb = None
    plan = [(arch, "transfer") for arch in c.archs] + ([(c.archs[0], "scratch")] if c.scratch else [])
    given = dict(zip(c.archs, c.backbones))
    for arch, regime in plan:
        key = f"{arch}-{regime}"
        path = models_dir / f"{key}.pt"
        spec = ModelSpec(arch=arch, num_classes=m.num_classes, in_channels=m.channels, image_size=c.image_size,
                         class_names=m.class_names)
        if not path.exists():
            backbone: str | Path | None = None
            if regime == "transfer" and arch in given:
                backbone = given[arch]  # ImageNet weights: a torchvision .pth file, or "imagenet" (downloads)
            elif regime == "transfer":
                backbone = models_dir / f"{arch}-backbone.pt"
                if not backbone.exists():
                    if rgb is None:
                        rgb, _, _ = load_image_folder(c.natural_a, channels=3, size=c.image_size, limit=c.pretrain_images, seed=c.seed)
                    ctx.log(f"pretraining {arch} on {len(rgb)} natural photos ({c.pretrain_epochs} epochs)")
                    bspec = ModelSpec(arch=arch, num_classes=len(rgb), in_channels=3, image_size=c.image_size).validate()
                    save_classifier(pretrain_natural(rgb, spec=bspec, config=TrainConfig(epochs=c.pretrain_epochs, balanced=False,
                                                                                         seed=c.seed).validate()), backbone)
            ctx.log(f"training {key} ({'transfer learning' if backbone else 'random initialization'}, {c.train_epochs} epochs)")
            model, metrics = finetune(m, spec=spec, config=TrainConfig(epochs=c.train_epochs, seed=c.seed, device=c.device).validate(),
                                      backbone_weights=backbone)
            save_classifier(model, path, extra={"test_accuracy": metrics["test_accuracy"], "regime": regime})
            (models_dir / f"{key}.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2, default=str))
        info = json.loads((models_dir / f"{key}.json").read_text())
        ctx.models[key] = for_inference(load_classifier(path, map_location=c.device), device=c.device)
        ctx.model_info[key] = {"arch": arch, "regime": regime, "path": path, "test_accuracy": info["test_accuracy"]}
        ctx.log(f"  {key}: test accuracy {info['test_accuracy']:.3f}")


# --------------------------------------------------------------------------- the study


def study_jobs(c: ReproduceConfig) -> list[tuple[str, str, float, str | None]]:
    """Every UAP the study needs: (model key, source, ζ, target)."""
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


def _cross_arch(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """R_f of the natural-set-A UAP made on architecture A, applied to architecture B (a gray-box attack)."""
    c = ctx.config
    out = []
    by = {r["trial_id"]: r for r in rows}
    for a in c.archs:
        rho = torch.from_numpy(np.load(by[trial_id(f"{a}-transfer", "natural_a", c.paper_zeta, None)]["uap_uri"]))
        for b in c.archs:
            key = f"{b}-transfer"
            adv = predict_labels(ctx.models[key], ctx.medical.test_images, rho=rho)
            out.append({"made_on": a, "applied_to": b, "fooling_rate": fooling_rate(_clean_test_labels(ctx, key), adv)})
    return out


def _composition(ctx: Context) -> list[dict[str, Any]]:
    """Tables S1-S3: the share of each natural set (and the training images) per predicted label, per model."""
    out = []
    names = ctx.medical.class_names
    sets = {"natural_a": ctx.natural["natural_a"], "natural_b": ctx.natural["natural_b"], "train": _train_subset(ctx)}
    for key, model in ctx.models.items():
        for s, images in sets.items():
            comp = label_composition(predict_labels(model, images), num_classes=len(names))
            out.append({"model": key, "source": s, **by_class(comp, names)})
    return out


def run_reproduce(config: ReproduceConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the study; returns the summary the report is rendered from (also ``study.json``)."""
    from tqdm import tqdm

    from .results import read_results, write_rows

    c = config
    c.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    medical = load_medical(c.medical).resized(c.image_size)
    unknown = [t for t in c.targets if t not in medical.class_names]
    if unknown:
        raise InputError(f"target class(es) {', '.join(unknown)} not in {c.medical}'s classes {', '.join(medical.class_names)} "
                         f"(the paper's: {PAPER_TARGETS})")
    natural = {}
    for s, loc in (("natural_a", c.natural_a), ("natural_b", c.natural_b)):
        images, _, skipped = load_image_folder(loc, channels=medical.channels, size=c.image_size, limit=c.natural_limit, seed=c.seed)
        natural[s] = images
        log(f"{s}: {len(images)} images from {loc} ({'gray' if medical.channels == 1 else 'RGB'}, {c.image_size}px"
            + (f", {skipped.count} unreadable skipped)" if skipped.count else ")"))
    ctx = Context(c, medical, natural, log=log)
    _train_models(ctx)
    sel_path = c.out / "selected.json"
    ctx.selected = json.loads(sel_path.read_text()) if sel_path.exists() else {}
    for key in ctx.models:
        for kind, images in (("natural", natural["natural_a"]), ("train", _train_subset(ctx))):
            if f"{key}/{kind}" not in ctx.selected:
                ctx.selected[f"{key}/{kind}"] = select_eps_p(ctx, key, kind, images)
                sel_path.write_text(json.dumps(ctx.selected, indent=2))
    results = c.out / "results"
    sweep = f"reproduce-{c.preset}"
    done = set()
    if (results / f"sweep={sweep}").exists():
        done = set(read_results(results, filters={"sweep": sweep}).column("trial_id").to_pylist())
    jobs = study_jobs(c)
    for key, source, zeta, target in tqdm(jobs, desc="UAPs", unit="uap"):
        if trial_id(key, source, zeta, target) in done:
            continue
        write_rows(results, [run_one(ctx, key, source, zeta, target)])  # one file per UAP: a crash loses nothing
    rows = read_results(results, filters={"sweep": sweep}).to_pylist()
    study = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
        "class_names": list(medical.class_names),
        "models": {k: {**v, "path": str(v["path"])} for k, v in ctx.model_info.items()},
        "selected": ctx.selected,
        "composition": _composition(ctx),
        "cross_arch": _cross_arch(ctx, rows) if c.cross_arch and len(c.archs) > 1 else [],
        "natural_images": {s: len(x) for s, x in natural.items()},
        "seconds": time.perf_counter() - started,
    }
    (c.out / "study.json").write_text(json.dumps(study, indent=2, default=str))
    return study


def estimate_gpu_hours(config: ReproduceConfig, *, images_per_second: float, datasets: int = 3) -> dict[str, float]:
    """GPU-hours of the study's UAP updates at a measured update rate (training and evaluation not included)."""
    jobs = study_jobs(config)
    per_source = {"train": config.train_limit or 5000, "natural_a": config.natural_limit or 100_000,
                  "natural_b": config.natural_limit or 100_000, "natural_a_balanced": config.natural_limit or 100_000, "random": 0}
    images = sum(per_source[s] for _, s, _, _ in jobs) * config.max_passes * datasets
    grid = len(config.eps_grid) * len(config.p_grid) * config.select_images * config.max_passes
    grid *= (len(config.archs) + int(config.scratch)) * 2 * datasets
    total = images + grid
    return {"uaps": len(jobs) * datasets, "update_images": total, "gpu_hours": total / images_per_second / 3600}

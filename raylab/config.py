"""Typed run configuration, validated once at the edge (the CLI or a job) and passed down.

Each field that the command line offers is declared once, here, with
:func:`option` (its default, its help text, and its flag when that differs
from ``--field-name``); :mod:`raylab.options` derives the argparse options
from these declarations, so a default lives in one place. Every check raises
:class:`raylab.errors.InputError` with one line that names the bad value,
before any compute starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .core.fgsm import STEP_NORMS, StepNorm
from .core.norms import Norm, parse_norm
from .core.sgd import SCHEDULES, Schedule
from .core.uap import Mode
from .errors import InputError

#: A UAP source: a natural-image folder, the medical training set, or the random control.
SOURCE_TRAIN = "train"
SOURCE_RANDOM = "random"
#: The UAP methods: the paper's (iterative FGSM steps accepted per image) and stochastic gradient ascent on ρ.
METHODS = ("paper", "sgd")
#: Passes over the source when none are given: the paper made 1; the stochastic-gradient method needs epochs.
DEFAULT_PASSES = {"paper": 1, "sgd": 10}


def _shared_data() -> Path:
    """``../shared/data`` from the working directory (the repository's root, where the README runs raylab), else the
    one beside the repository this package is installed from (an editable install run from another folder)."""
    here, beside = Path("../shared/data"), Path(__file__).resolve().parents[2] / "shared" / "data"
    return here if here.is_dir() or not beside.is_dir() else beside


#: Where the shared real data lives beside this repository (the CLI's defaults).
DEFAULT_DATA = _shared_data()
DEFAULT_MEDICAL = DEFAULT_DATA / "pneumoniamnist.npz"


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           parse: Callable[[str], Any] | None = None, choices: tuple[Any, ...] | None = None,
           factory: Callable[[], Any] | None = None) -> Any:
    """A config field that is also a command-line option (see :mod:`raylab.options`).

    ``flag`` overrides the derived ``--field-name``; ``parse`` converts one command-line word (default: from the
    field's type); ``choices`` restricts the words.
    """
    metadata = {"help": help, "flag": flag, "parse": parse, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(cls: type, name: str) -> Any:
    """The declared default of ``cls.name`` (so another config can reuse it rather than repeat it)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check(ok: bool, message: str) -> None:
    """The one validation style: ``check(x > 0, f"x must be > 0, got {x}")`` raises a one-line InputError."""
    if not ok:
        raise InputError(message)


def finite(name: str, value: Any) -> None:
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          f"{name} must be a finite number, got {value!r}")


#: Seeds lie in [0, 2**32 - 1), so that the seed and ``seed + 1`` (the random control's) are both taken by every
#: generator raylab seeds (torch's, NumPy's, Python's).
SEED_LIMIT = 2**32


def check_seed(seed: Any) -> None:
    check(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT - 1,
          f"seed must be an integer in [0, {SEED_LIMIT - 1}), got {seed!r}")


def check_device(device: str) -> None:
    check(device == "cpu" or device.startswith("cuda"), f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def require_device(device: str) -> None:
    """A CUDA device asked for where none is visible (or ``cuda:N`` past the last) is one line before any compute,
    not torch's traceback from the first transfer to it."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA GPU is visible")
    index, count = torch.device(device).index, torch.cuda.device_count()
    if index is not None and index >= count:
        raise InputError(f"device {device!r} asked for, but {count} CUDA GPU(s) are visible (cuda:0..{count - 1})")


def missing(path: str | Path) -> str:
    """``path`` is not there, with the folder a relative path was looked up in (the defaults, such as
    ``../shared/data``, are relative to the repository root)."""
    path = Path(path)
    return f"{path}: does not exist (relative to {Path.cwd()})" if not path.is_absolute() else f"{path}: does not exist"


def check_model(model: str) -> None:
    """A local model file exists and is a file (a folder is named as one, with the checkpoints in it); URLs are
    checked when they are read."""
    if "://" in model:
        return
    path = Path(model)
    if path.is_dir():
        found = sorted(q.name for q in path.iterdir() if q.suffix in (".pt", ".pth", ".pt2", ".onnx"))[:4]
        raise InputError(f"model {model} is a folder, not a model file"
                         + (f"; it holds {', '.join(found)}" if found else ""))
    check(path.is_file(), f"model {missing(path)}")


def check_medical(medical: str | Path) -> None:
    """The medical dataset (a MedMNIST ``.npz`` or a CSV folder) exists."""
    path = Path(medical)
    check(path.exists(), f"medical dataset {missing(path)}")


def norm(p: Any) -> Norm:
    try:
        return parse_norm(p)
    except ValueError as e:
        raise InputError(str(e)) from None


def _target(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text


#: The settings only one method reads: the paper's FGSM step (Section 2.2), the stochastic-gradient method's schedule.
METHOD_SETTINGS = {"paper": ("eps", "step_norm"), "sgd": ("lr", "loss_clamp", "schedule")}


def ignored_settings(methods: Iterable[str], given: Iterable[str]) -> str | None:
    """A note naming the settings in ``given`` (fields set on the command line) that none of ``methods`` reads
    (``--eps`` for a run of the stochastic-gradient method, whose step is ``--lr``), or None."""
    methods, given = set(methods), set(given)
    unused = [(m, f) for m, fields in METHOD_SETTINGS.items() if m not in methods for f in fields if f in given]
    if not unused:
        return None
    named = ", ".join(f"--{f.replace('_', '-')}" for _, f in unused)
    owner = unused[0][0]  # with two methods, one run has them all: only one method's settings can be unused
    one = len(unused) == 1
    return (f"note: {named} {'is' if one else 'are'} ignored: {'it is a setting' if one else 'they are settings'} of "
            f"--method {owner}, and this run is --method {' '.join(sorted(methods))}")


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """The UAP parameters every run shares (Section 2.2): method, norm, budget ζ, steps, passes, δ, target, batching."""

    method: str = option("paper", "paper: the paper's iterative FGSM UAP (ART's UniversalPerturbation); sgd: stochastic "
                                  "gradient ascent on rho (Shafahi et al. 2020), the stronger attack", choices=METHODS)
    p: Norm = option(2, "norm of the UAP: 2 or inf", parse=str)
    zeta: float = option(0.04, "budget as a ratio of the mean Lp norm of the medical training images (0.04 = 4%%)")
    eps: float = option(0.0005, "paper: FGSM step size epsilon (0.0005 is the paper's chest X-ray value)")
    max_passes: int | None = option(None, "i_max: passes over the input images (default: 1 for the paper's method, "
                                          "as in the paper; 10 epochs for sgd)", flag="--i-max")
    lr: float = option(1.0, "sgd: the first step, as a fraction of the radius (decaying from a whole radius found the "
                            "strong direction on every seed tried; 0.2 stalled on some, see the README)")
    loss_clamp: float = option(10.0, "sgd: beta, the cap of each image's cross-entropy in the non-targeted loss")
    schedule: Schedule = option("linear", "sgd: the step decays linearly to 0 over the run, or stays constant",
                                choices=SCHEDULES)
    delta: float = option(0.0, "stop once the score on the inputs reaches 1-delta (0: the authors' runs)")
    target: str | None = option(None, "target class name or index for a targeted UAP (default: non-targeted)", parse=_target)
    batch_size: int = option(32, "images per update (per worker in the engine)")
    step_norm: StepNorm = option("sign", "FGSM step: sign (the authors') or l2-normalized gradient", choices=STEP_NORMS)
    clip: bool = option(False, "clip x+rho to the valid pixel range (the authors did not)")
    seed: int = option(0, "seed of the image order and of the random control")
    device: str = option("cpu", "cpu or cuda[:N]")
    amp: bool = option(False, "mixed-precision forward passes (bf16 on CPU, fp16 on CUDA)")
    static_shapes: bool = option(False, "the paper's method with one shape per batch and no host sync per batch (the "
                                        "same decisions; always on for cuda)")
    compile: bool = option(False, "torch.compile the model (static shapes; the first batch pays the compilation)")
    examples: int = option(8, "clean/adversarial test images drawn in examples.png")

    @property
    def static(self) -> bool:
        """Whether the paper's method runs on the static-shape update: asked for, or on a GPU."""
        return self.static_shapes or self.device.startswith("cuda")

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", norm(self.p))
        check(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        if self.max_passes is None:
            object.__setattr__(self, "max_passes", DEFAULT_PASSES[self.method])
        for name in ("zeta", "eps", "delta", "lr", "loss_clamp"):
            finite(name, getattr(self, name))
        check(self.zeta > 0, f"zeta must be > 0 (a ratio, e.g. 0.04 for 4%), got {self.zeta}")
        check(self.zeta <= 1, f"zeta is a ratio of the mean image norm and must be <= 1, got {self.zeta}")
        check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.loss_clamp > 0, f"loss_clamp must be > 0, got {self.loss_clamp}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check(0 <= self.delta < 1, f"delta must be in [0, 1), got {self.delta}")
        check(self.max_passes >= 1, f"max_passes (i_max) must be >= 1, got {self.max_passes}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.step_norm in STEP_NORMS, f"step_norm must be one of {STEP_NORMS}, got {self.step_norm!r}")
        check_device(self.device)
        check_seed(self.seed)
        check(self.examples >= 0, f"examples must be >= 0, got {self.examples}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def attack_only(self) -> "AttackConfig":
        """Just the UAP parameters (for records), whatever subclass this is."""
        return AttackConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AttackConfig)})


@dataclass(frozen=True, kw_only=True)
class UAPConfig(AttackConfig):
    """One UAP run on one machine (``raylab uap``): what to attack, with which images, and how."""

    model: str = option(help="classifier checkpoint from `raylab train` (path or fsspec URL)")
    medical: Path = option(DEFAULT_MEDICAL, "the medical dataset the model classifies (.npz or CSV folder)", flag="--data")
    source: str = option(help="UAP input images: a folder of natural images, a shard location (`raylab shard`), 'train' "
                              "(the medical training set) or 'random' (the control)")
    out: Path = option(help="output directory")
    mode: Mode = option("batched", "faithful: per image, ART's semantics; batched: B images per update", choices=("faithful", "batched"))
    chunk_size: int = option(1000, "images per chunk; rho is carried from chunk to chunk (the authors' code streamed 100 x 1,000)")
    limit: int | None = option(None, "use a seeded random sample of this many source images")
    balance: bool = option(False, "resample the source so every label the model predicts for it is equally frequent "
                                  "(the control the paper's Discussion proposes)")
    cuda_graphs: bool = option(False, "the paper's method with each static-shape step captured once as a CUDA graph "
                                      "and replayed (for the launch-bound faithful mode; cuda only)")
    checkpoint_seconds: float = option(60.0, "write a checkpoint at the end of a pass once this many seconds passed "
                                             "since the last (0: after every pass); rerun with the same --out to resume")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "medical", Path(self.medical))
        object.__setattr__(self, "out", Path(self.out))
        check(self.mode in ("faithful", "batched"), f"mode must be 'faithful' or 'batched', got {self.mode!r}")
        check(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        finite("checkpoint_seconds", self.checkpoint_seconds)
        check(self.checkpoint_seconds >= 0, f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        check_model(self.model)
        check_medical(self.medical)
        if self.source not in (SOURCE_TRAIN, SOURCE_RANDOM):
            check(Path(self.source).is_dir(), f"UAP source {self.source!r}: no such folder (give a folder of images, a "
                                              "shard location from `raylab shard`, 'train' or 'random')")
        check(not (self.balance and self.source == SOURCE_RANDOM), "balance needs source images; the random control has none")
        check(not self.cuda_graphs or self.device.startswith("cuda"), f"cuda_graphs needs --device cuda, got {self.device!r}")
        check(not self.cuda_graphs or self.method == "paper", "cuda_graphs is for the paper's method (--method paper)")

    @property
    def effective_batch_size(self) -> int:
        return 1 if self.mode == "faithful" and self.method == "paper" else self.batch_size


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """A finished UAP evaluated on a model (``raylab evaluate``): one made by another model, run or tool — does it
    fool this one too? R_f, R_s and the random control of the UAP's own norm (Section 2.3), on the model's test set."""

    uap: str = option(help="the UAP: a uap.npy (path or fsspec URL), C x H x W in the model's input space [0, 1]")
    model: str = option(help="the classifier to evaluate it on (path or fsspec URL)")
    medical: Path = option(DEFAULT_MEDICAL, "the medical dataset the model classifies (.npz or CSV folder)", flag="--data")
    target: str | None = option(None, "a target class: its success rate R_s is the headline (default: the fooling rate)")
    p: Norm = option(2, "the norm the UAP is measured in, and its random control drawn in: 2 or inf", parse=str)
    seed: int = option(0, "seed of the random control")
    clip: bool = option(False, "clip x+rho to the valid pixel range (the authors did not)")
    device: str = option("cpu", "cpu or cuda[:N]")
    amp: bool = option(False, "mixed-precision forward passes (bf16 on CPU, fp16 on CUDA)")
    out: str | None = option(None, "also write metrics.json and confusion.png into this folder (path or fsspec URL)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", norm(self.p))
        object.__setattr__(self, "medical", Path(self.medical))
        check("://" in self.uap or Path(self.uap).is_file(), f"UAP {missing(self.uap)}" if not Path(self.uap).is_dir()
              else f"UAP {self.uap} is a folder; give the uap.npy in it")
        check_model(self.model)
        check_medical(self.medical)
        check_device(self.device)
        check_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


#: Where an engine run decodes JPEGs stored at the model's size (``--decode-on``).
DECODE_PLACES = ("reader", "worker")
#: When a worker's next batch is copied to its device during the current update (:mod:`raylab.engine.staging`).
STAGE_MODES = ("auto", "on", "off")


@dataclass(frozen=True, kw_only=True)
class EngineConfig(AttackConfig):
    """One distributed UAP run on Ray (``raylab generate``, ``jobs/generate_uap.py``).

    Natural images stream from webdataset shards (``raylab shard``) through
    reader actors to ``workers`` worker actors of ``batch_size`` images each;
    a round sums their accepted steps and projects once (the batched rule of
    :mod:`raylab.core.uap` with batch ``workers x batch_size``).
    """

    model: str = option(help="classifier checkpoint (path or fsspec URL)")
    medical: Path = option(DEFAULT_MEDICAL, "the medical dataset the model classifies (.npz or CSV folder)", flag="--data")
    shards: str = option(help="shard location written by `raylab shard` (path or URL)")
    out: str = option(help="output location (path or URL); rerun with the same one to resume")
    workers: int = option(1, "worker actors (one per GPU, or per CPU slot)")
    cpus_per_worker: float = option(1.0, "CPUs each worker actor asks Ray for")
    cpus_per_reader: float = option(1.0, "CPUs each reader actor asks Ray for")
    shuffle: bool = option(True, "visit the images in a seeded random order (--seed): each pass's shards and each "
                                 "shard's samples, as the paper draws its images; --no-shuffle streams them in shard order")
    prefetch: int = option(4, "batches each reader decodes ahead (bounded: flat memory)")
    decode_threads: int = option(0, "decode threads per reader (0: one per CPU it asks for, --cpus-per-reader)")
    decode_on: str = option("reader", "where JPEGs stored at the model's size are decoded: reader (CPU threads) or "
                                      "worker (on its device: nvJPEG on a GPU; other images stay on the reader)",
                            choices=DECODE_PLACES)
    stage: str = option("auto", "copy each worker's next batch to its device while it computes the current one: auto "
                                "(on a GPU), on, or off (each update copies its own batch)", choices=STAGE_MODES)
    resources: dict[str, float] = option(help="custom Ray resources each reader and worker needs, as JSON, "
                                              "e.g. '{\"uap_pool\": 1}' to keep them on those nodes", factory=dict)
    checkpoint_every: int = option(20, "rounds between checkpoints")
    eval_every: int = option(0, "evaluate on the test set every N rounds (0: at the end only)")
    progress_every: float = option(10.0, "seconds between progress lines")
    max_batch_attempts: int = option(3, "tries of one batch before the run fails naming it (a batch whose update "
                                        "kills its worker every time)")
    hang_timeout: float | None = option(None, "seconds one batch may take before its worker (or reader) is presumed hung, "
                                              "killed and replaced (default: 10 x the slowest of the last 20 updates, "
                                              "at least 120)")
    restart_timeout: float = option(300.0, "seconds to wait for Ray to restart a lost worker or reader (a node joining, "
                                           "or capacity freed) before the run fails, keeping its checkpoint")
    start_timeout: float = option(900.0, "seconds to wait, at the start, for the cluster to place every worker and "
                                         "reader (the autoscaler launching nodes) before the run stops, nothing computed")
    spread: bool = option(True, "spread workers and readers over the cluster's nodes (Ray's SPREAD strategy; "
                                "--no-spread packs them)")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "medical", Path(self.medical))
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        for name in ("cpus_per_worker", "cpus_per_reader", "progress_every", "restart_timeout", "start_timeout"):
            finite(name, getattr(self, name))
        check(self.cpus_per_worker > 0 and self.cpus_per_reader > 0, "cpus_per_worker and cpus_per_reader must be > 0")
        check(self.progress_every >= 0, f"progress_every must be >= 0 (seconds; 0: every round), got {self.progress_every}")
        check(self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}")
        check(self.decode_on in DECODE_PLACES, f"decode_on must be one of {', '.join(DECODE_PLACES)}, got {self.decode_on!r}")
        check(self.stage in STAGE_MODES, f"stage must be one of {', '.join(STAGE_MODES)}, got {self.stage!r}")
        check(self.decode_threads >= 0, f"decode_threads must be >= 0 (0: one per reader CPU), got {self.decode_threads}")
        check(isinstance(self.resources, dict), f"resources must be a JSON object of amounts, got {self.resources!r}")
        for name, amount in self.resources.items():
            check(isinstance(name, str) and name not in ("CPU", "GPU", "memory"),
                  f"resources: {name!r} is not a custom resource name (CPU and GPU have their own options)")
            finite(f"resources[{name!r}]", amount)
            check(amount > 0, f"resources[{name!r}] must be > 0, got {amount}")
        check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        check(self.max_batch_attempts >= 1, f"max_batch_attempts must be >= 1, got {self.max_batch_attempts}")
        check(self.hang_timeout is None or self.hang_timeout > 0, f"hang_timeout must be > 0, got {self.hang_timeout}")
        check(self.restart_timeout > 0, f"restart_timeout must be > 0, got {self.restart_timeout}")
        check(self.start_timeout > 0, f"start_timeout must be > 0, got {self.start_timeout}")
        check_model(self.model)
        check_medical(self.medical)

    @property
    def reader_threads(self) -> int:
        """Decode threads of each reader: ``decode_threads``, or one per CPU the reader asks for."""
        return self.decode_threads or max(1, round(self.cpus_per_reader))

    @property
    def staged(self) -> bool:
        """Whether each worker's next batch is copied to its device ahead (``stage``: auto is on for cuda)."""
        return self.stage == "on" or (self.stage == "auto" and self.device.startswith("cuda"))

    @property
    def num_gpus_per_worker(self) -> float:
        return 1.0 if self.device.startswith("cuda") else 0.0

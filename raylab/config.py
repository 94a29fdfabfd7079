"""Typed run configuration, validated once at the edge (the CLI or a job) and passed down.

Every check raises :class:`raylab.errors.InputError` with one line that names
the bad value, before any compute starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.fgsm import STEP_NORMS, StepNorm
from .core.norms import Norm, parse_norm
from .core.uap import Mode
from .errors import InputError

#: A UAP source: a natural-image folder, the medical training set, or the random control.
SOURCE_TRAIN = "train"
SOURCE_RANDOM = "random"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """The UAP parameters every run shares (Section 2.2): norm, budget ζ, step ε, passes, δ, target, batching."""

    p: Norm = 2
    zeta: float = 0.04
    eps: float = 0.0005
    max_passes: int = 1
    delta: float = 0.0
    target: str | None = None
    batch_size: int = 32
    step_norm: StepNorm = "sign"
    clip: bool = False
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    examples: int = 8

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "p", parse_norm(self.p))
        except ValueError as e:
            raise InputError(str(e)) from None
        for name in ("zeta", "eps", "delta"):
            _finite(name, getattr(self, name))
        _check(self.zeta > 0, f"zeta must be > 0 (a ratio, e.g. 0.04 for 4%), got {self.zeta}")
        _check(self.zeta <= 1, f"zeta is a ratio of the mean image norm and must be <= 1, got {self.zeta}")
        _check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _check(0 <= self.delta < 1, f"delta must be in [0, 1), got {self.delta}")
        _check(self.max_passes >= 1, f"max_passes (i_max) must be >= 1, got {self.max_passes}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.step_norm in STEP_NORMS, f"step_norm must be one of {STEP_NORMS}, got {self.step_norm!r}")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        _check(self.examples >= 0, f"examples must be >= 0, got {self.examples}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass(frozen=True, kw_only=True)
class UAPConfig(AttackConfig):
    """One UAP run (``raylab uap``): what to attack, with which images, and how."""

    model: Path
    medical: Path
    source: str
    out: Path
    mode: Mode = "batched"
    chunk_size: int = 1000
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.mode in ("faithful", "batched"), f"mode must be 'faithful' or 'batched', got {self.mode!r}")
        _check(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        _check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        _check(self.model.is_file(), f"model weights not found: {self.model}")
        _check(self.medical.exists(), f"medical dataset not found: {self.medical}")
        if self.source not in (SOURCE_TRAIN, SOURCE_RANDOM):
            _check(Path(self.source).is_dir(), f"UAP source must be a folder of images, 'train' or 'random', got {self.source!r}")


@dataclass(frozen=True, kw_only=True)
class EngineConfig(AttackConfig):
    """One distributed UAP run on Ray (``raylab generate``, ``jobs/generate_uap.py``).

    Natural images stream from webdataset shards (``raylab shard``) through
    reader actors to ``workers`` worker actors of ``batch_size`` images each;
    a round sums their accepted steps and projects once (the batched rule of
    :mod:`raylab.core.uap` with batch ``workers x batch_size``).
    """

    model: str
    medical: Path
    shards: str
    out: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    cpus_per_reader: float = 1.0
    prefetch: int = 4
    resources: dict[str, float] = field(default_factory=dict)
    checkpoint_every: int = 20
    eval_every: int = 0
    progress_every: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        _check(self.cpus_per_worker > 0 and self.cpus_per_reader > 0, "cpus_per_worker and cpus_per_reader must be > 0")
        _check(self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}")
        for name, amount in self.resources.items():
            _check(isinstance(name, str) and name not in ("CPU", "GPU", "memory"),
                   f"resources: {name!r} is not a custom resource name (CPU and GPU have their own options)")
            _finite(f"resources[{name!r}]", amount)
            _check(amount > 0, f"resources[{name!r}] must be > 0, got {amount}")
        _check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        if "://" not in self.model:
            _check(Path(self.model).is_file(), f"model weights not found: {self.model}")
        _check(self.medical.exists(), f"medical dataset not found: {self.medical}")

    @property
    def num_gpus_per_worker(self) -> float:
        return 1.0 if self.device.startswith("cuda") else 0.0


def resolve_target(target: str | None, class_names: tuple[str, ...]) -> int | None:
    """A target class given by name or index -> its index; None for a non-targeted UAP."""
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.lstrip("-").isdigit() and 0 <= int(target) < len(class_names):
        return int(target)
    raise InputError(f"target class {target!r} does not exist; classes are {', '.join(class_names)} (or 0..{len(class_names) - 1})")

"""The engine's run state (what a checkpoint holds) and the pure functions that advance it.

:func:`commit_round` is a round's commit, Section 2.2's batched rule made
distributed: the workers' summed accepted steps are added in worker order,
``ρ <- Proj(ρ + Σ_w step_w)`` is taken once, a non-finite ρ stops the run
before anything is counted, and only then are the counters, reader positions
and skip records advanced. :func:`end_of_pass` applies the δ stop. Both return
a new :class:`RunState` and leave the old one as it was, so they are tested on
their own and a failed round changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..core import Norm, StepStats, project_lp, sgd_step, step_size
from ..core.sgd import Schedule
from ..errors import InputError, RaylabError, unreadable_torch_file
from ..fingerprint import Fingerprint
from .readers import BatchMeta, Position

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "raylab.engine-checkpoint/1"
#: The UAP parameters that determine ρ; a resumed run must match them (and the model, shards and medical data).
FINGERPRINT_KEYS = ("method", "p", "zeta", "eps", "max_passes", "delta", "target", "batch_size", "workers", "step_norm",
                    "clip", "seed", "amp", "lr", "loss_clamp", "schedule")


def _counts() -> dict[str, int]:
    return {"images": 0, "active": 0, "accepted": 0}


@dataclass
class RunState:
    """Everything needed to resume: ρ, the round, each reader's position, and the counters."""

    rho: Tensor
    round: int = 0
    positions: list[list[int]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=_counts)
    per_pass: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[list[str]] = field(default_factory=list)
    shards_failed: list[list[str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_delta: bool = False

    @staticmethod
    def start(shape: tuple[int, ...], workers: int) -> "RunState":
        return RunState(rho=torch.zeros(shape), positions=[Position().to_list() for _ in range(workers)],
                        done=[False] * workers)

    def copy(self, **changes: Any) -> "RunState":
        """A deep copy of the bookkeeping (ρ is replaced, never modified in place), with ``changes``."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rho"}
        return RunState(rho=changes.pop("rho", self.rho), **{**json.loads(json.dumps(base)), **changes})

    @property
    def stream_rate(self) -> float:
        """The running rate on the stream: the share of visited images already fooled (or at the target)."""
        return 1 - self.stats["active"] / max(1, self.stats["images"])

    def to_bytes(self, fingerprint: Fingerprint) -> bytes:
        meta = {k: v for k, v in self.__dict__.items() if k != "rho"}
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint.digest, "rho": self.rho,
                    "state": json.dumps(meta), "parts": json.dumps(fingerprint.parts)}, buf)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes, fingerprint: Fingerprint, where: str) -> "RunState":
        """The state in a checkpoint of this run; InputError naming what differs for another run's."""
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{where}: cannot read checkpoint ({unreadable_torch_file(e)})") from None
        if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{where}: not a raylab engine checkpoint")
        if obj["fingerprint"] != fingerprint.digest:
            then = json.loads(obj["parts"]) if "parts" in obj else None  # checkpoints before 2026-12 name no parts
            raise InputError(f"{where}: checkpoint of a different run ({fingerprint.differences(then)}); use a new "
                             "output location, or the settings it was started with")
        return RunState(rho=obj["rho"], **json.loads(obj["state"]))


def fingerprint(attack: dict[str, Any], model_bytes: bytes, shards: Sequence[tuple[str, int, str]], medical: str) -> Fingerprint:
    """What determines ρ: the UAP parameters, the model's bytes, the shards and the medical data's digest.

    The medical data is part of it because the radius comes from its training images (Section 2.2).
    """
    params = {k: attack[k] for k in FINGERPRINT_KEYS}
    shard_list = json.dumps([list(s) for s in shards]).encode()
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(shard_list)
    h.update(medical.encode())
    parts = {**json.loads(json.dumps(params, default=str)), "model": hashlib.sha256(model_bytes).hexdigest()[:16],
             "shards": hashlib.sha256(shard_list).hexdigest()[:16], "medical": medical[:16]}
    return Fingerprint(h.hexdigest(), parts)


@dataclass(frozen=True)
class WorkerResult:
    """One worker's part of a round: the sum of its accepted steps, its counts, and the batch it came from."""

    worker: int
    step: Tensor
    stats: StepStats
    meta: BatchMeta


def _add(bucket: dict[str, int], stats: StepStats) -> None:
    bucket["images"] += stats.images
    bucket["active"] += stats.active
    bucket["accepted"] += stats.accepted


def record_marker(state: RunState, worker: int, meta: BatchMeta) -> RunState:
    """A reader's end-of-pass marker (no images): its skip records, and the reader moves to the next pass."""
    new = state.copy()
    new.positions[worker] = meta.end.to_list()
    new.skipped += [list(s) for s in meta.skipped]
    new.shards_failed += [list(s) for s in meta.shards_failed]
    return new


@dataclass(frozen=True)
class PaperRule:
    """The paper's method (Section 2.2, batched): ``ρ <- Proj(ρ + Σ accepted steps)``; no step when none was accepted."""

    radius: float
    p: Norm

    def apply(self, rho: Tensor, total: Tensor, accepted: int, t: int) -> Tensor:
        return project_lp(rho + total, radius=self.radius, p=self.p) if accepted else rho


@dataclass(frozen=True)
class SGDRule:
    """The stochastic-gradient method (:mod:`raylab.core.sgd`): one step along the round's summed gradient, its size
    ``lr_t`` from the round's place ``t`` among the run's ``total_steps`` rounds."""

    radius: float
    p: Norm
    lr: float
    schedule: Schedule
    total_steps: int
    sign: float

    def apply(self, rho: Tensor, total: Tensor, accepted: int, t: int) -> Tensor:
        size = step_size(t, self.total_steps, lr=self.lr, radius=self.radius, schedule=self.schedule)
        return sgd_step(rho, total, size=size, p=self.p, radius=self.radius, sign=self.sign)


Rule = PaperRule | SGDRule


def commit_round(state: RunState, results: Sequence[WorkerResult], *, rule: Rule) -> RunState:
    """The next state after a round: the workers' parts summed in worker order, one step of ``rule``, then the
    counters.

    Raises :class:`RaylabError` when ρ turns NaN/inf, before anything is counted: the caller's state (and the last
    checkpoint) stay as they were.
    """
    ordered = sorted(results, key=lambda r: r.worker)
    total = torch.zeros_like(state.rho)
    accepted = 0
    for r in ordered:
        total += r.step
        accepted += r.stats.accepted
    rho = rule.apply(state.rho, total, accepted, state.round)
    if not torch.isfinite(rho).all():
        raise RaylabError(f"round {state.round + 1}: rho became NaN/inf (non-finite gradients from the model?); "
                          "the last good checkpoint is kept")
    new = state.copy(rho=rho, round=state.round + 1)
    for r in ordered:
        _add(new.stats, r.stats)
        _add(new.per_pass.setdefault(str(r.meta.start.pass_), _counts()), r.stats)
        new.positions[r.worker] = r.meta.end.to_list()
        new.skipped += [list(s) for s in r.meta.skipped]
        new.shards_failed += [list(s) for s in r.meta.shards_failed]
    return new


def end_of_pass(state: RunState, *, max_passes: int, delta: float) -> tuple[RunState, str | None]:
    """After a pass is complete on every reader: stop once its stream score reached 1 - δ, or nothing was active.

    Returns the new state and, when the run stops early, the line to log.
    """
    live = [Position.from_list(p).pass_ for p, d in zip(state.positions, state.done) if not d]
    finished = (min(live) if live else max_passes) - 1
    counts = state.per_pass.get(str(finished))
    if counts is None or counts.get("checked"):
        return state, None
    new = state.copy()
    new.per_pass[str(finished)]["checked"] = 1
    score = 1 - counts["active"] / max(1, counts["images"])
    if (delta > 0 and score >= 1 - delta) or counts["active"] == 0:
        new.stopped_by_delta = finished + 1 < max_passes
        if new.stopped_by_delta:
            return new, f"stream score {score:.3f} after pass {finished + 1} reached 1 - delta; stopping"
    return new, None


def distinct(pairs: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """``"name: why"`` of each named item once (a corrupt image or a failed shard recurs on every pass)."""
    seen: dict[str, str] = {}
    for name, why in pairs:
        seen.setdefault(name, why)
    return tuple(f"{n}: {w}" for n, w in seen.items())

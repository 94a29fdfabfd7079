"""A single-machine UAP's checkpoint: ``raylab uap``, and every UAP of an audit, a sweep or the reproduction.

A UAP over many images is hours on a CPU; a run that stops (a crash, a kill, a preempted machine) resumes from its
last checkpoint and makes the UAP it would have made without stopping. The paper's method runs chunk by chunk
(Section 2.2; the authors streamed 100 x 1,000 images) and each chunk pass by pass, the stochastic-gradient method
epoch by epoch over all its images; after a pass the attack hands out a :class:`~raylab.core.uap.PassState`, and
the checkpoint (:class:`Checkpoint`) is that state, the chunk it belongs to, the counts of the chunks before it and
the seconds spent. It is written atomically through :class:`~raylab.store.Store` at the end of a pass once
``every`` seconds have passed since the last write, and removed once the run's record is written.

A checkpoint is resumed only by the run that wrote it (:class:`~raylab.fingerprint.Fingerprint`: the UAP
parameters, the model's weights, the source images and the radius); another run's is refused in one line naming
what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .config import UAPConfig
from .core import PassState, StepStats
from .fingerprint import CheckpointFile, Fingerprint, tensor_digest
from .progress import duration
from .store import Store

CHECKPOINT = "uap-checkpoint.pt"
FORMAT = "raylab.uap-checkpoint/1"
#: The UAP parameters that determine ρ; where and how fast it runs (device, compile, static shapes) do not.
KEYS = ("method", "p", "zeta", "eps", "max_passes", "delta", "target", "step_norm", "clip", "seed", "amp", "lr",
        "loss_clamp", "schedule", "mode", "chunk_size")


@dataclass(frozen=True)
class Checkpoint:
    """Where a UAP's generation stands: chunk ``chunk`` after ``state.passes`` of its passes."""

    chunk: int
    state: PassState
    #: The counts of the chunks before it, and the most passes any of them made.
    done: StepStats = StepStats()
    passes: int = 0
    #: Seconds of generation spent so far (a resumed run's record counts them).
    seconds: float = 0.0

    def describe(self, images: int, config: UAPConfig) -> str:
        """``"chunk 3 of 10, after pass 1 of 2 (4.2 min of generation kept)"``, ``"chunk 3 of 10 done (...)"``."""
        chunks = 1 if config.method == "sgd" else -(-images // config.chunk_size)
        unit = "epoch" if config.method == "sgd" else "pass"
        if chunks == 1:
            where = "generation done" if self.state.finished else f"after {unit} {self.state.passes} of {config.max_passes}"
        elif self.state.finished:
            where = f"chunk {self.chunk + 1} of {chunks} done"
        else:
            where = f"chunk {self.chunk + 1} of {chunks}, after {unit} {self.state.passes} of {config.max_passes}"
        return f"{where} ({duration(self.seconds)} of generation kept)"


#: The ``images`` part of the random control's fingerprint, which no image determines.
RANDOM_CONTROL = "random"


def fingerprint(config: UAPConfig, model: nn.Module, images: Tensor | None, radius: float) -> Fingerprint:
    """What determines ρ: the UAP parameters, the model's weights, the source images and the radius (which the
    medical training images give, Section 2.2). ``images`` None: the random control, which only p, ζ (its radius) and
    the seed determine (and the model, which its record evaluates)."""
    weights = tensor_digest(model.state_dict().items())[:16]
    if images is None:
        return Fingerprint.of({"p": config.p, "zeta": config.zeta, "seed": config.seed, "radius": radius,
                               "model": weights, "images": RANDOM_CONTROL})
    return Fingerprint.of({**{k: getattr(config, k) for k in KEYS}, "batch_size": config.effective_batch_size,
                           "radius": radius, "model": weights, "images": tensor_digest([("images", images)])[:16]})


def uap_checkpoint(store: Store, identify: Callable[[], Fingerprint], *, every: float) -> CheckpointFile[Checkpoint]:
    """A run's ``uap-checkpoint.pt`` in ``store``: read at the start, written after a pass, removed at the end."""
    return CheckpointFile(store, CHECKPOINT, format=FORMAT, what="run", identify=identify, every=every, dump=_dump,
                          parse=_parse)


def _dump(checkpoint: Checkpoint) -> dict:
    s = checkpoint.state
    meta = {"chunk": checkpoint.chunk, "passes": s.passes, "stats": _counts(s.stats), "history": list(s.history),
            "finished": s.finished, "done": _counts(checkpoint.done), "chunk_passes": checkpoint.passes,
            "seconds": checkpoint.seconds}
    return {"rho": s.rho.detach().cpu(), "progress": json.dumps(meta)}


def _counts(stats: StepStats) -> list[int]:
    return [stats.images, stats.active, stats.accepted]


def _parse(obj: dict) -> Checkpoint:
    meta = json.loads(obj["progress"])
    state = PassState(meta["passes"], obj["rho"], StepStats(*meta["stats"]), tuple(meta["history"]), meta["finished"])
    return Checkpoint(meta["chunk"], state, StepStats(*meta["done"]), meta["chunk_passes"], meta["seconds"])

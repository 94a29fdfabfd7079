"""What determines a resumable run's result, as one digest (:class:`Fingerprint`): a checkpoint is resumed only by the
run that wrote it, and a refusal names what differs.

The engine's checkpoint (:mod:`raylab.engine.state`), a single-machine UAP's (:mod:`raylab.resume`) and a training's
(:mod:`raylab.training_checkpoint`) are checked by it; each decides what goes into its digest. The latter two are
read and written through :class:`CheckpointFile`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

import torch

from .errors import InputError, one_line, unreadable_torch_file
from .store import Store

T = TypeVar("T")

#: How a differing digest part is named in a refusal.
PART_NAMES = {"model": "the model's weights differ", "shards": "the shards differ",
              "medical": "the medical data differs (the radius comes from its training images)",
              "images": "the source images differ"}


@dataclass(frozen=True)
class Fingerprint:
    """What determines ρ: ``digest``, one hash, decides whether a checkpoint is this run's; ``parts`` (the UAP
    parameters as given, and short digests of the model, images and medical data) name what differs when not."""

    digest: str
    parts: dict[str, Any]

    @staticmethod
    def of(parts: dict[str, Any]) -> "Fingerprint":
        """The fingerprint whose parts are ``parts`` (as JSON gives them back) and whose digest is theirs."""
        parts = json.loads(json.dumps(parts, default=str))
        return Fingerprint(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts)

    def differences(self, then: dict[str, Any] | None) -> str:
        """``"workers=1 then, 2 now; the shards differ"``, from the parts a checkpoint recorded."""
        if then is None:
            return "model, shards, medical data or UAP parameters differ"
        said = [PART_NAMES[k] if k in PART_NAMES else f"{k}={then.get(k)!r} then, {v!r} now"
                for k, v in self.parts.items() if then.get(k) != v]
        return "; ".join(said) or "its fingerprint differs"


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes for a hash, read in place (copied only where it is not on the CPU or not contiguous)."""
    return memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors: their names, shapes, dtypes and bytes (read in place, not copied)."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


class CheckpointFile(Generic[T]):
    """One resumable run's checkpoint ``name`` in ``store``: :meth:`load` at the start, :meth:`save` as the run goes,
    :meth:`remove` once its result is written. ``identify`` gives the run's fingerprint, computed once and only when a
    checkpoint is read or written (it may hash many images); ``dump`` turns what is saved into the checkpoint's
    entries (tensors, numbers, strings) and ``parse`` turns them back. A save comes at most every ``every`` seconds.
    """

    def __init__(self, store: Store, name: str, *, format: str, what: str, identify: Callable[[], Fingerprint],
                 every: float, dump: Callable[[T], dict[str, Any]], parse: Callable[[dict[str, Any]], T]) -> None:
        self.store, self.name, self.format, self.what = store, name, format, what
        self.identify, self.every, self.dump, self.parse = identify, every, dump, parse
        self._fingerprint: Fingerprint | None = None
        self._last = time.monotonic()

    @property
    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = self.identify()
        return self._fingerprint

    @property
    def where(self) -> str:
        return self.store.path(self.name)

    def load(self) -> T | None:
        """This run's checkpoint, None when there is none. One of another ``format``, unreadable, or written by a run
        of other parts is an InputError in one line naming it (and, for another run's, what differs), before any
        compute."""
        if not self.store.exists(self.name):
            return None
        try:
            obj = torch.load(io.BytesIO(self.store.read_bytes(self.name)), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{self.where}: cannot read this checkpoint ({unreadable_torch_file(e)}); remove it to start "
                             "over") from None
        try:
            if not (isinstance(obj, dict) and obj.get("format") == self.format):
                raise ValueError(f"not a raylab {self.what} checkpoint")
            then = json.loads(obj["parts"])
            parsed = self.parse(obj)
        except Exception as e:
            raise InputError(f"{self.where}: cannot read this checkpoint ({one_line(e, 120)}); remove it to start over") from None
        if then != self.fingerprint.parts:
            raise InputError(f"{self.where}: checkpoint of a different {self.what} "
                             f"({self.fingerprint.differences(then)}); use another output location, the settings it "
                             "was started with, or remove it to start over")
        return parsed

    def save(self, item: T) -> bool:
        """Write ``item`` when ``every`` seconds have passed since the last write (atomically); True if written."""
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        buf = io.BytesIO()
        torch.save({"format": self.format, "parts": json.dumps(self.fingerprint.parts), **self.dump(item)}, buf)
        self.store.write_bytes(self.name, buf.getvalue())
        self._last = now
        return True

    def remove(self) -> None:
        self.store.remove(self.name)

"""What determines a resumable run's result, as one digest (:class:`Fingerprint`): a checkpoint is resumed only by the
run that wrote it, and a refusal names what differs.

The engine's checkpoint (:mod:`raylab.engine.state`), a single-machine UAP's (:mod:`raylab.resume`) and a training's
(:mod:`raylab.training_checkpoint`) are checked by it; each decides what goes into its digest. The latter two are
read by :func:`read_checkpoint`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch

from .errors import InputError
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


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors: their names, shapes, dtypes and bytes (read in place, not copied)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def read_checkpoint(store: Store, name: str, *, format: str, identity: Fingerprint, what: str,
                    parse: Callable[[dict[str, Any]], T]) -> T | None:
    """The checkpoint ``name`` of ``store`` parsed by ``parse``, None when there is none. One written with another
    ``"parts"`` than ``identity``'s, of another ``format``, or unreadable, is an InputError in one line naming it
    (and, for another run's, what differs), before any compute."""
    if not store.exists(name):
        return None
    where = store.path(name)
    try:
        obj = torch.load(io.BytesIO(store.read_bytes(name)), map_location="cpu", weights_only=True)
        if not (isinstance(obj, dict) and obj.get("format") == format):
            raise ValueError(f"not a raylab {what} checkpoint")
        then = json.loads(obj["parts"])
        parsed = parse(obj)
    except Exception as e:
        raise InputError(f"{where}: cannot read this checkpoint ({' '.join(str(e).split())[:120]}); remove it to "
                         "start over") from None
    if then != identity.parts:
        raise InputError(f"{where}: checkpoint of a different {what} ({identity.differences(then)}); use another "
                         "output location, the settings it was started with, or remove it to start over")
    return parsed

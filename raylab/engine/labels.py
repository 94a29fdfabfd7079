"""Clean labels C(x) carried from a batch's first pass to its later passes.

A non-targeted update needs C(x) of every image of its batch (Section 2.2's
acceptance rule compares C(x + ρ) with C(x)); C(x) depends on the image only,
not on ρ, so a worker computes it once, on the batch's first pass, and the
driver hands it back with the same batch on every later pass: one forward of
the update's four saved per image from the second pass on. A reader's batches
start at the same positions in every pass (its stream is the same shard list,
cut the same way), so a batch is known by its reader and its start position
within the pass; its first and last keys and its size are checked too, and a
batch that does not match (or one the driver never saw, after a resume) has its
labels computed again, never guessed. Targeted updates never read C(x).

Memory: two bytes an image of the stream (0.2 MB for the paper's 100,000), held
by the driver for the run; not checkpointed (a resumed run computes them again).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .readers import BatchMeta


@dataclass(frozen=True)
class _Entry:
    first: str
    last: str
    labels: Tensor


class CleanLabels:
    """C(x) of the batches seen so far, by ``(reader, start position within a pass)``."""

    def __init__(self) -> None:
        self._by: dict[tuple[int, int, int], _Entry] = {}
        self.reused = 0  # images whose clean labels were handed back instead of computed

    @staticmethod
    def _key(worker: int, meta: BatchMeta) -> tuple[int, int, int]:
        return worker, meta.start.cursor.shard, meta.start.cursor.offset

    def get(self, worker: int, meta: BatchMeta) -> Tensor | None:
        """The labels of this batch if an earlier pass computed them (same keys, same size), else None."""
        entry = self._by.get(self._key(worker, meta))
        if entry is None or len(entry.labels) != meta.size or not meta.keys or \
                (entry.first, entry.last) != (meta.keys[0], meta.keys[-1]):
            return None
        return entry.labels

    def put(self, worker: int, meta: BatchMeta, labels: Tensor) -> None:
        """Keep ``labels`` (one per image of the batch) for the batch's later passes."""
        if meta.keys and len(labels) == meta.size:
            labels = labels.to("cpu")
            small = labels.short() if int(labels.max()) < 2**15 else labels.int()
            self._by[self._key(worker, meta)] = _Entry(meta.keys[0], meta.keys[-1], small)

    def count_reused(self, images: int) -> None:
        self.reused += images

"""Whether the readers keep the workers fed, from the run's own measured rates, and what to change if not.

A reader decodes ahead of its worker (``--prefetch``), which hides decoding only
while a batch decodes faster than it computes. Every :data:`ROUNDS` rounds the
driver compares the two over the last :data:`WINDOW` batches (medians of each
reader's wall time per batch, with its decode threads, and of each worker's
compute time per batch) and, when the workers waited for data more than
:data:`IDLE_LIMIT` of the time, says once how many reader CPUs would keep up:
threads x decode time / compute time, rounded up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: The share of worker time spent waiting for data above which the run says so (issue 18: under 5 %).
IDLE_LIMIT = 0.05
#: Rounds between judgements (the first judgement waits that long: the first rounds include start-up).
ROUNDS = 10
#: Batches the medians cover (the most recent ones).
WINDOW = 200


@dataclass
class FeedCheck:
    """Collects decode and compute seconds per batch; :meth:`verdict` speaks once, when the workers starve."""

    threads: int
    decode: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    compute: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    spoken: bool = False

    def add(self, decode_seconds: float, compute_seconds: float) -> None:
        self.decode.append(decode_seconds)
        self.compute.append(compute_seconds)

    def medians(self) -> tuple[float | None, float | None]:
        """Median decode and compute seconds per batch over the window (robust to a slow first batch)."""
        return tuple(sorted(v)[len(v) // 2] if v else None for v in (self.decode, self.compute))  # type: ignore[return-value]

    def verdict(self, idle_fraction: float, rounds: int) -> str | None:
        """One warning line naming the measured rates and the reader CPUs that would keep up, or None."""
        if self.spoken or rounds < ROUNDS or rounds % ROUNDS or not self.decode:
            return None
        decode, compute = self.medians()
        if idle_fraction <= IDLE_LIMIT or decode <= compute or compute <= 0:
            return None
        self.spoken = True
        need = math.ceil(self.threads * decode / compute)
        return (f"warning: the workers waited for data {idle_fraction:.0%} of the time: a reader decodes a batch in "
                f"{decode:.3g} s with {self.threads} decode thread(s), a worker computes one in {compute:.3g} s; give "
                f"each reader about {need} CPUs (--cpus-per-reader {need}), store the shards resized as JPEG "
                "(raylab shard --image-size N --format jpg), or decode on the workers (--decode-on worker)")

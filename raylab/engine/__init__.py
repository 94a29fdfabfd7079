"""The distributed engine: webdataset shards -> reader actors -> worker actors -> one UAP, on Ray.

:mod:`.readers` (decode ahead, seekable), :mod:`.workers` (model replicas,
batched updates), :mod:`.driver` (rounds, reduction, checkpoints, evaluation).

The driver's names load on first use: a reader or worker actor's process imports only its own module (and torch),
not the driver's results, Parquet and evaluation code, which saves about half a second of start-up per actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import Engine, RoundReport, run_engine

__all__ = ["Engine", "RoundReport", "run_engine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

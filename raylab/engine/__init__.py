"""The distributed engine: webdataset shards -> reader actors -> worker actors -> one UAP, on Ray.

:mod:`.readers` (decode ahead, seekable), :mod:`.workers` (model replicas,
batched updates), :mod:`.driver` (rounds, reduction, checkpoints, evaluation).
"""

from .driver import Engine, RoundReport, run_engine

__all__ = ["Engine", "RoundReport", "run_engine"]

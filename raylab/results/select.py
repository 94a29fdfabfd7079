"""The paper's selection of ε and p: per group of otherwise equal trials, the grid point that fools the most, over
its seeds (Section 2.2: ε and p "were selected using a grid search to maximize the performance of the UAPs")."""

from __future__ import annotations

import math

import pyarrow as pa

from ..errors import InputError
from ..spread import spread
from .seeds import by_point
from .summary import sorted_indices


#: Rows compete for "best" only within one sweep, medical set, model, source, method, target, ζ and i_max.
BEST_GROUP = ("sweep", "medical", "model", "arch", "source_kind", "source", "method", "target", "zeta", "max_passes")


def select_best(table: pa.Table) -> pa.Table:
    """The paper's selection: per :data:`BEST_GROUP` (ε and p compete, the model never), the grid point with the best
    score, scored by its mean over seeds (:mod:`raylab.results.seeds`: never by its luckiest seed).

    The score is ``fooling_rate`` for a non-targeted row and ``success_rate`` when
    ``target`` is set (a null score ranks last). Ties go to the smaller step (``eps`` of the
    paper's method, ``lr`` of the stochastic-gradient one), then ``p`` ("2" before "inf"), then ``trial_id``.
    The result has the input's schema: every row (one per seed) of each group's chosen point, sorted by sweep,
    zeta, p, eps.
    """
    need = set(BEST_GROUP) | {"fooling_rate", "success_rate", "eps", "lr", "p", "trial_id", "seed"}
    missing = sorted(need - set(table.column_names))
    if missing:
        raise InputError(f"select_best: table has no column {missing[0]!r}")
    rows = table.to_pylist()
    best: dict[tuple, tuple[tuple, list[int]]] = {}
    for members in by_point(rows).values():
        first = rows[members[0]]
        group = tuple(first[c] for c in BEST_GROUP)
        scores = [rows[i]["success_rate"] if first["target"] is not None else rows[i]["fooling_rate"] for i in members]
        s = spread(scores)
        step = first["eps"] if first["eps"] is not None else first["lr"]
        rank = (-(s["mean"] if s is not None else -math.inf), math.inf if step is None else step, first["p"] or "",
                min(rows[i]["trial_id"] or "" for i in members))
        if group not in best or rank < best[group][0]:
            best[group] = (rank, members)
    chosen = table.take(pa.array(sorted(i for _, members in best.values() for i in members), type=pa.int64()))
    return chosen.take(pa.array(sorted_indices(chosen), type=pa.int64()))

"""The paper's selection of ε and p: per group of otherwise equal trials, the row that fools the most (Section 2.2:
ε and p "were selected using a grid search to maximize the performance of the UAPs")."""

from __future__ import annotations

import math

import pyarrow as pa

from ..errors import InputError
from .summary import sorted_indices


#: Rows compete for "best" only within one sweep, medical set, model, source, method, target, ζ and i_max.
BEST_GROUP = ("sweep", "medical", "model", "arch", "source_kind", "source", "method", "target", "zeta", "max_passes")


def select_best(table: pa.Table) -> pa.Table:
    """The paper's selection: per :data:`BEST_GROUP` (ε and p compete, the model never), the row with the best score.

    The score is ``fooling_rate`` for a non-targeted row and ``success_rate`` when
    ``target`` is set (a null score ranks last). Ties go to the smaller step (``eps`` of the
    paper's method, ``lr`` of the stochastic-gradient one), then ``p`` ("2" before "inf"), then ``trial_id``. The result has the input's schema,
    one row per group, sorted by sweep, zeta, p, eps.
    """
    need = set(BEST_GROUP) | {"fooling_rate", "success_rate", "eps", "lr", "p", "trial_id"}
    missing = sorted(need - set(table.column_names))
    if missing:
        raise InputError(f"select_best: table has no column {missing[0]!r}")
    cols = {c: table.column(c).to_pylist() for c in need}
    best: dict[tuple, tuple[tuple, int]] = {}
    for i in range(table.num_rows):
        group = tuple(cols[c][i] for c in BEST_GROUP)
        score = cols["success_rate"][i] if cols["target"][i] is not None else cols["fooling_rate"][i]
        if score is None or (isinstance(score, float) and math.isnan(score)):
            score = -math.inf
        step = cols["eps"][i] if cols["eps"][i] is not None else cols["lr"][i]
        rank = (-score, math.inf if step is None else step, cols["p"][i] or "", cols["trial_id"][i] or "")
        if group not in best or rank < best[group][0]:
            best[group] = (rank, i)
    chosen = table.take(pa.array(sorted(i for _, i in best.values()), type=pa.int64()))
    return chosen.take(pa.array(sorted_indices(chosen), type=pa.int64()))

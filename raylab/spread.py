"""Numbers over seeds: mean ± sd, and when one is clearly above another.

A fooling rate from one seed is one sample of the UAP's image order, not a result; every headline number of an
audit or of the reproduction is a :func:`spread` over seeds, and a sentence that compares two of them is chosen
by :func:`clearly_above`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

#: Two rates closer than this (2 points) are never called different, whatever their sds.
MIN_GAP = 0.02

Spread = dict[str, float]


def spread(values: Iterable[float | None]) -> Spread | None:
    """``{"mean", "sd", "n"}`` of the values that are there (sample sd, 0 for one value); None for none."""
    vals = [float(v) for v in values if v is not None and not np.isnan(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}


def clearly_above(a: Spread | None, b: Spread | None) -> bool:
    """``a`` is clearly above ``b``: the means differ by more than both sds and by at least :data:`MIN_GAP`."""
    if a is None or b is None:
        return False
    gap = a["mean"] - b["mean"]
    return gap >= MIN_GAP and gap > a["sd"] and gap > b["sd"]

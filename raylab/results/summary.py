"""The results as plain text: an aligned table of chosen columns (``raylab results``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError

SUMMARY_COLUMNS = ("sweep", "trial_id", "arch", "source_kind", "method", "p", "zeta", "eps", "lr", "target",
                   "fooling_rate", "success_rate", "random_fooling_rate", "images_per_second")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, list):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v)


def sorted_indices(table: pa.Table) -> list[int]:
    """Row order by sweep, zeta, p, eps (then trial_id), nulls last."""
    keys = [("sweep", "ascending"), ("zeta", "ascending"), ("p", "ascending"), ("eps", "ascending"),
            ("trial_id", "ascending")]
    keys = [k for k in keys if k[0] in table.column_names]
    if not keys:
        return list(range(table.num_rows))
    return pc.sort_indices(table, sort_keys=keys).to_pylist()  # nulls sort last by default


def summary_table(table: pa.Table, columns: Iterable[str] | None = None) -> str:
    """A plain-text, aligned table of ``columns`` (default :data:`SUMMARY_COLUMNS`), sorted by sweep, zeta, p, eps.

    Floats have 3 significant digits, nulls print as ``-``; numbers are right-aligned.
    """
    cols = list(SUMMARY_COLUMNS if columns is None else columns)
    for c in cols:
        if c not in table.column_names:
            raise InputError(f"summary: unknown column {c!r}; columns are {', '.join(table.column_names)}")
    if not cols:
        raise InputError("summary: no columns to show")
    order = sorted_indices(table)
    data = {c: table.column(c).to_pylist() for c in cols}
    numeric = {c: pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type)
               for c in cols}
    cells = [[_cell(data[c][i]) for c in cols] for i in order]
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[c] else v.ljust(w)
                         for v, w, c in zip(values, widths, cols)).rstrip()

    out = [line(cols), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    if not cells:
        out.append("(no results)")
    return "\n".join(out)

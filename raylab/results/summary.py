"""The results as plain text: an aligned table of chosen columns (``raylab results``), per trial or, for a table of
:func:`raylab.results.seeds.over_seeds`, per grid point with each rate as mean ± sd over its seeds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from .naming import PATHS, short_names, varying
from .seeds import POINT

SUMMARY_COLUMNS = ("sweep", "trial_id", "arch", "source_kind", "method", "p", "zeta", "eps", "lr", "target",
                   "fooling_rate", "success_rate", "random_fooling_rate", "images_per_second")
#: The default columns of a table over seeds (no trial id: a row is every seed's trial of one grid point).
SEED_SUMMARY_COLUMNS = ("sweep", "arch", "source_kind", "method", "p", "zeta", "eps", "lr", "target", "seeds",
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


def _default_columns(table: pa.Table, over_seeds: bool) -> list[str]:
    base = list(SEED_SUMMARY_COLUMNS if over_seeds else SUMMARY_COLUMNS)
    others = [c for c in (*POINT, *(() if over_seeds else ("seed",))) if c in table.column_names and c not in base]
    rows = table.select([*others, "source_kind"]).to_pylist()
    extra = varying(rows, others)
    if "source" in extra and all(len({r["source"] for r in rows if r["source_kind"] == k}) == 1
                                 for k in {r["source_kind"] for r in rows}):
        extra.remove("source")  # each kind has one source (e.g. one shard location beside random): the kind says it
    at = base.index("arch") + 1
    return base[:at] + extra + base[at:]


def summary_table(table: pa.Table, columns: Iterable[str] | None = None) -> str:
    """A plain-text, aligned table of ``columns`` (default :data:`SUMMARY_COLUMNS`, or :data:`SEED_SUMMARY_COLUMNS`
    for a table over seeds), sorted by sweep, zeta, p, eps.

    Floats have 3 significant digits, nulls print as ``-``; numbers are right-aligned. A column with an ``<name>_sd``
    beside it prints as ``mean ± sd`` under the header ``<name> ± sd`` (``mean (1 seed)`` for a grid point of one
    seed, which has no sd). The default columns gain, after ``arch``,
    every other setting that varies over the rows (two models or shard locations, i_max, the seed of rows not over
    seeds …), so no two rows of different runs read the same; paths are shown by their last part where that still
    tells them apart; the random control's method is ``-``, as its step is (its ρ is noise).
    """
    over_seeds = "seeds" in table.column_names
    cols = list(_default_columns(table, over_seeds) if columns is None else columns)
    for c in cols:
        if c not in table.column_names:
            raise InputError(f"summary: unknown column {c!r}; columns are {', '.join(table.column_names)}")
    if not cols:
        raise InputError("summary: no columns to show")
    order = sorted_indices(table)
    data = {c: table.column(c).to_pylist() for c in cols}
    if "method" in data and "source_kind" in table.column_names:  # noise has no method: its row records one to group by
        kinds = table.column("source_kind").to_pylist()
        data["method"] = [None if k == "random" else m for m, k in zip(data["method"], kinds)]
    for c in set(cols) & set(PATHS):
        shown = short_names(c, data[c])
        data[c] = [shown[v] for v in data[c]]
    numeric = {c: pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type)
               for c in cols}
    sd = {c: table.column(f"{c}_sd").to_pylist() for c in cols if f"{c}_sd" in table.column_names}
    seeds = table.column("seeds").to_pylist() if over_seeds else None

    def cell(c: str, i: int) -> str:
        if c in sd and data[c][i] is not None:
            if seeds is not None and len(seeds[i]) == 1:  # one sample has no sd: '± 0' would read as a tight result
                return f"{data[c][i]:.3g} (1 seed)"
            return f"{data[c][i]:.3g} ± {sd[c][i]:.2g}"
        return _cell(data[c][i])

    cells = [[cell(c, i) for c in cols] for i in order]
    heads = [f"{c} ± sd" if c in sd else c for c in cols]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[c] else v.ljust(w)
                         for v, w, c in zip(values, widths, cols)).rstrip()

    out = [line(heads), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    if not cells:
        out.append("(no results)")
    return "\n".join(out)

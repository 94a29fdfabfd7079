"""Rows that differ only by their seed, as one grid point: each rate's mean ± sd over the seeds.

A fooling rate from one seed is one sample of the UAP's image order, not a result (:mod:`raylab.spread`); a sweep
with ``--seeds 0 1 2`` runs every grid point once per seed, and :func:`over_seeds` puts each point's rows together.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..spread import spread
from .schema import SCHEMA

#: The columns that a run measures or names (ids, times, artifacts, metrics, versions) and the seed: every other
#: column is the grid point's configuration.
MEASURED = frozenset({
    "schema_version", "trial_id", "run_id", "created_at", "seed", "fooling_rate", "success_rate", "random_fooling_rate",
    "random_success_rate", "clean_accuracy", "balanced_accuracy", "majority_accuracy", "test_images", "accepted",
    "images_processed", "images_skipped", "confusion_matrix", "class_names", "wall_seconds", "images_per_second",
    "uap_uri", "uap_l2", "uap_linf", "raylab_version", "torch_version", "ray_version"})
#: The grid point's configuration, in the schema's order.
POINT = tuple(n for n in SCHEMA.names if n not in MEASURED)
#: The numbers given as mean and sd over seeds.
OVER_SEEDS = ("fooling_rate", "success_rate", "random_fooling_rate", "random_success_rate", "images_per_second")


def point(row: dict[str, Any]) -> tuple:
    """The grid point of a row: its configuration without the seed."""
    return tuple(row.get(n) for n in POINT if n in row)


def by_point(rows: list[dict[str, Any]]) -> dict[tuple, list[int]]:
    """The indices of ``rows`` per grid point, points in the order of their first row."""
    points: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        points.setdefault(point(r), []).append(i)
    return points


def over_seeds(table: pa.Table) -> pa.Table:
    """One row per grid point: its :data:`POINT` columns, ``seeds`` (the sorted seeds) and, for each of
    :data:`OVER_SEEDS`, the mean over the seeds and ``<name>_sd`` (the sample sd; 0 for one seed; null where the rate
    is null, e.g. ``success_rate`` of a non-targeted point). Points keep the order of their first row."""
    rows = table.to_pylist()
    fields = [SCHEMA.field(n) for n in POINT if n in table.column_names]
    fields.append(pa.field("seeds", pa.list_(pa.int64())))
    for n in OVER_SEEDS:
        fields += [pa.field(n, pa.float64()), pa.field(f"{n}_sd", pa.float64())]
    out = []
    for members in by_point(rows).values():
        rs = [rows[i] for i in members]
        row: dict[str, Any] = {f.name: rs[0][f.name] for f in fields if f.name in rs[0]}
        row["seeds"] = sorted(r["seed"] for r in rs)
        for n in OVER_SEEDS:
            s = spread(r[n] for r in rs)
            row[n], row[f"{n}_sd"] = (None, None) if s is None else (s["mean"], s["sd"])
        out.append(row)
    return pa.Table.from_pylist(out, schema=pa.schema(fields))

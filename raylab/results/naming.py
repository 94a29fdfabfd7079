"""How rows are told apart: the grid-point columns whose values vary over them, and paths named by their last part."""

from __future__ import annotations

from typing import Any, Iterable

#: Columns that hold a path or URL.
PATHS = ("source", "model", "medical")


def varying(rows: list[dict[str, Any]], columns: Iterable[str]) -> list[str]:
    """The ``columns`` whose values are not all the same over ``rows``, in their order."""
    return [c for c in columns if len({r.get(c) for r in rows}) > 1]


def short_names(column: str, values: Iterable[Any]) -> dict[Any, Any]:
    """Each value as shown: paths and URLs (:data:`PATHS`) by their fewest last parts that still tell them apart
    (``a/models/m.pt`` and ``b/models/m.pt`` as themselves, ``x/shards`` and ``y/photos`` as ``shards`` and
    ``photos``), anything else as it is."""
    values = set(values)
    if column not in PATHS:
        return {v: v for v in values}
    parts = {v: str(v).rstrip("/").split("/") for v in values}
    for k in range(1, max((len(p) for p in parts.values()), default=0) + 1):
        tail = {v: "/".join(p[-k:]) for v, p in parts.items()}
        if len(set(tail.values())) == len(values):
            return tail
    return {v: str(v) for v in values}

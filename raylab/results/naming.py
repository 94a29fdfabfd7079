"""How rows are told apart: the grid-point columns whose values vary over them, and paths named by their last part."""

from __future__ import annotations

from typing import Any, Iterable

#: Columns that hold a path or URL.
PATHS = ("source", "model", "medical")


def varying(rows: list[dict[str, Any]], columns: Iterable[str]) -> list[str]:
    """The ``columns`` whose values are not all the same over ``rows``, in their order."""
    return [c for c in columns if len({r.get(c) for r in rows}) > 1]


def short_names(column: str, values: Iterable[Any]) -> dict[Any, Any]:
    """Each value as shown: paths and URLs (:data:`PATHS`) each by its fewest last parts that no other value ends in
    (``a/models/m.pt`` and ``b/models/m.pt`` as themselves, ``x/shards`` and ``y/photos`` as ``shards`` and
    ``photos``, and beside those two ``m.pt`` files a third path ``c/models/n.pt`` as ``n.pt``), anything else as it
    is."""
    values = set(values)
    if column not in PATHS:
        return {v: v for v in values}
    parts = {v: str(v).rstrip("/").split("/") for v in values}

    def tail(v: Any, k: int) -> str:
        return "/".join(parts[v][-k:])

    names = {}
    for v, p in parts.items():
        others = [w for w in values if w != v]
        k = next((k for k in range(1, len(p) + 1) if all(tail(w, k) != tail(v, k) for w in others)), None)
        names[v] = tail(v, k) if k is not None else str(v)
    return names

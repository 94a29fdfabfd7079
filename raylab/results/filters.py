"""Filters on a results dataset: a filter's text typed as its column (``--filter zeta=0.04``), and the pyarrow
expression that keeps the rows equal to the wanted values (a path column also those ending in the value's parts, as
the tables show paths: ``--filter model=other/m.pt``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..errors import InputError
from .naming import PATHS
from .schema import SCHEMA, norm_p


def filter_value(name: str, text: str) -> Any:
    """A filter's value typed as its column (``zeta=0.04`` a double, ``sweep=5`` the text ``"5"``); ``none`` or
    ``null`` is null. Text that is not a value of its column (or of no column) is left as it is, for
    :func:`read_results` to refuse with the column's type."""
    if text.lower() in ("none", "null"):
        return None
    if name not in SCHEMA.names or pa.types.is_list(SCHEMA.field(name).type) or name == "p":
        return text
    try:
        return pa.scalar(text).cast(SCHEMA.field(name).type).as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return text


def filter_expr(filters: dict[str, Any]) -> ds.Expression | None:
    expr = None
    for name, want in filters.items():
        if name not in SCHEMA.names:
            raise InputError(f"filter on unknown column {name!r}; columns are {', '.join(SCHEMA.names)}")
        field = SCHEMA.field(name)
        if pa.types.is_list(field.type):
            raise InputError(f"cannot filter on list column {name!r}")
        values = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
        if name == "p":
            values = [v if v is None else norm_p(v) for v in values]
        scalars = []
        for v in values:
            if v is None:
                continue
            try:
                scalars.append(pa.scalar(v, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                raise InputError(f"filter {name}={v!r} does not match the column's type {field.type}") from None
        col = ds.field(name)
        term = None
        if scalars:
            term = col == scalars[0] if len(scalars) == 1 else col.isin(pa.array(scalars, type=field.type))
        if name in PATHS:  # a path as the tables show it, by its last parts: model=other/m.pt, source=photos
            for v in values:  # (an absolute path or a URL is itself only)
                if isinstance(v, str) and v.strip("/") and not v.startswith("/") and "://" not in v:
                    term = term | pc.ends_with(col, pattern="/" + v.rstrip("/"))
        if None in values:
            term = col.is_null() if term is None else term | col.is_null()
        if term is None:  # an empty list of wanted values matches nothing
            term = ds.scalar(False)
        expr = term if expr is None else expr & term
    return expr

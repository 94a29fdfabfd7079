"""The results dataset: one Parquet file per UAP trial, in one dataset that every common reader opens.

Layout of a results location (a local directory or an fsspec URL such as
``memory://r`` or ``s3://bucket/results``)::

    <location>/_schema.json                    {"schema_version": 3, "fields": [{"name", "type", "nullable"}, ...]}
    <location>/<sweep>/trial-<trial_id>.parquet   one file, one row per trial

Every file is written atomically (a hidden ``.<name>.<hex>.tmp`` name, then a
rename, through :class:`raylab.store.Store`), so a crash leaves the previous
file or none. Rewriting a trial replaces its file, so a resumed sweep adds no
duplicate row. Readers ignore every name that starts with ``.`` or ``_``.
The ``sweep`` column is stored inside each file, and its directory is the plain
sweep name (not ``sweep=<name>``, which hive partition discovery would turn into
a second ``sweep`` column of another type): pandas, ``pyarrow.parquet``, pyarrow
datasets, DuckDB, Polars and Ray Data all read a location with their default
arguments and get one ``sweep`` column (tests/test_results.py reads it with each).

Version 2 locations (``sweep=<sweep>/`` directories) are still read; writing into one is refused with one line.
Version 1 had no ``method`` and ``lr`` and a non-null ``eps``, and is refused. The columns are in
:mod:`raylab.results.schema`, filters in :mod:`raylab.results.filters`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..errors import InputError, one_line
from ..store import Store, filesystem, is_url
from .filters import filter_expr
from .schema import SCHEMA, SCHEMA_VERSION, row_name, validate_row

#: Versions :func:`read_results` reads, each with its folder per sweep: this one, and version 2 (``sweep=<sweep>``
#: directories, no balanced or majority accuracy: read as nulls).
READABLE_VERSIONS = {2: "sweep={sweep}", 3: "{sweep}"}
SCHEMA_FILE = "_schema.json"


def _schema_doc() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "layout": "<sweep>/trial-<trial_id>.parquet",
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in SCHEMA],
    }


def _stored_version(store: Store) -> int | None:
    """The schema version in ``_schema.json``, None when there is none; InputError when unreadable."""
    if not store.exists(SCHEMA_FILE):
        return None
    where = store.path(SCHEMA_FILE)
    try:
        doc = json.loads(store.read_bytes(SCHEMA_FILE))
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: not a readable schema file ({e})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{where}: no integer 'schema_version'")
    return version


def _file_name(row: dict[str, Any]) -> str:
    return f"{row['sweep']}/trial-{row['trial_id']}.parquet"


def write_rows(location: str | Path, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Write each row as ``<location>/<sweep>/trial-<trial_id>.parquet``; returns the written URIs.

    Every row is validated before anything is written (a bad row raises
    :class:`InputError` naming the column and the trial). An existing trial file
    is replaced atomically. ``_schema.json`` is written too; a location holding
    another schema version is refused. Unwritable locations raise :class:`OutputError`.
    """
    checked = [validate_row(r) for r in rows]
    seen: set[tuple[str, str]] = set()
    for r in checked:
        key = (r["sweep"], r["trial_id"])
        if key in seen:
            raise InputError(f"{row_name(r)}: appears twice in one write")
        seen.add(key)
    if not checked:
        return []
    store = Store.at(location)
    store.makedirs()
    version = _stored_version(store)
    if version is not None and version != SCHEMA_VERSION:
        raise InputError(f"{store.location} holds results of schema version {version}; this raylab writes version "
                         f"{SCHEMA_VERSION} (a new layout): write to a new location")
    store.write_text(SCHEMA_FILE, json.dumps(_schema_doc(), indent=2) + "\n")
    uris = []
    for r in sorted(checked, key=lambda r: (r["sweep"], r["trial_id"])):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([r], schema=SCHEMA), buf)
        uris.append(store.write_bytes(_file_name(r), buf.getvalue().to_pybytes()))
    return uris


def read_row(location: str | Path, sweep: str, trial_id: str) -> dict[str, Any] | None:
    """The row of trial ``trial_id`` of ``sweep`` at ``location``, None when it has none or its file cannot be read
    (rewriting it is the cure): how a resumed sweep's trial knows it wrote its row before an interrupt."""
    store = Store.at(location)
    name = _file_name({"sweep": sweep, "trial_id": trial_id})
    if not store.exists(name):
        return None
    try:
        rows = pq.read_table(io.BytesIO(store.read_bytes(name)), schema=SCHEMA).to_pylist()
    except (pa.ArrowInvalid, OSError):
        return None
    return rows[0] if len(rows) == 1 else None


def _trial_files(fs: fsspec.AbstractFileSystem, root: str, sweep: str | None, version: int = SCHEMA_VERSION) -> list[str]:
    """``<sweep>/trial-*.parquet`` (version 2: ``sweep=<sweep>/``) under ``root``, skipping hidden (temporary) names."""
    root = root.rstrip("/")
    folder = READABLE_VERSIONS[version]
    base = f"{root}/{folder.format(sweep=sweep)}" if sweep is not None else root
    if sweep is not None and not fs.exists(base):
        return []
    depth = len([x for x in root.split("/") if x]) + 2
    files = []
    for path in fs.find(base, maxdepth=2 if sweep is None else 1):
        parts = [x for x in path.split("/") if x]
        if (len(parts) == depth and parts[-2].startswith("sweep=") == (version == 2) and parts[-1].startswith("trial-")
                and parts[-1].endswith(".parquet") and not parts[-2].startswith((".", "_"))):
            files.append(path)
    return sorted(files)


def read_results(location: str | Path, *, filters: dict[str, Any] | None = None) -> pa.Table:
    """Every row under ``location`` as a table with exactly the :data:`SCHEMA` columns.

    ``filters`` keeps rows whose columns equal the given values (``{"p": "2", "zeta": 0.04}``);
    a list, tuple or set means "any of", ``None`` means null, and ``p`` accepts ``2``/``"l2"``/``"linf"``.
    A missing location, an unknown filter column, a schema version other than 3 or 2, a damaged trial file (named)
    or one sweep's folder given as the location raises :class:`InputError`. Hidden files (temporary names of
    unfinished writes) are ignored.
    """
    loc = str(location).rstrip("/")
    if not is_url(loc):
        loc = str(Path(loc).resolve())
    fs, root = filesystem(loc)
    if not fs.exists(root):
        raise InputError(f"results location {loc} does not exist")
    if not fs.isdir(root):
        raise InputError(f"results location {loc} is a file, not a directory")
    filters = dict(filters or {})
    expr = filter_expr(filters)
    version = _stored_version(Store(loc))
    if version is not None and version not in READABLE_VERSIONS:
        raise InputError(f"{loc} holds results of schema version {version}; this raylab reads versions "
                         f"{', '.join(map(str, sorted(READABLE_VERSIONS)))}")
    sweep = filters.get("sweep")
    files = _trial_files(fs, root, sweep if isinstance(sweep, str) else None, version or SCHEMA_VERSION)
    if not files:
        if version is None and fs.glob(f"{root.rstrip('/')}/trial-*.parquet"):
            parent, _, name = loc.rpartition("/")
            raise InputError(f"{loc} is one sweep's folder: read the location above it, {parent}, filtered on "
                             f"sweep={name}")
        return SCHEMA.empty_table()
    try:
        table = _read_files(fs, files, expr)
    except (pa.ArrowInvalid, OSError) as e:
        bad = _first_unreadable(fs, files)
        why = f"{bad}; move that file aside to read the rest" if bad else one_line(e)
        raise InputError(f"cannot read results at {loc}: {why}") from None
    return table.combine_chunks()


def _read_files(fs: fsspec.AbstractFileSystem, files: list[str], expr: ds.Expression | None = None) -> pa.Table:
    return ds.dataset(files, schema=SCHEMA, format="parquet", filesystem=fs, partitioning=None).to_table(filter=expr)


def _first_unreadable(fs: fsspec.AbstractFileSystem, files: list[str]) -> str | None:
    """``<file>: <why>`` of the first trial file that cannot be read on its own (damaged, or columns of another
    type); None when each reads alone."""
    for f in files:
        try:
            _read_files(fs, [f])
        except (pa.ArrowInvalid, OSError) as e:
            return f"{f}: {one_line(e)}"
    return None

"""Sweep results: one Parquet row per UAP trial, in one dataset that every common reader opens.

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

Schema version 3 (:data:`SCHEMA`): the columns of version 2 plus ``balanced_accuracy`` and ``majority_accuracy``,
in the new layout.
Version 2 locations (``sweep=<sweep>/`` directories) are still read; writing
into one is refused with one line. Version 1 had no ``method`` and ``lr`` and a
non-null ``eps``, and is refused. One field at a time; "not null" unless marked
nullable.

Ids
    ``schema_version`` int32
        :data:`SCHEMA_VERSION` of the writer (2 in rows read from a version 2 location).
    ``sweep`` string
        The sweep id; also the name of its directory. Letters,
        digits and ``. _ - : @ +``, not starting with ``.``.
    ``trial_id`` string
        The trial id inside its sweep (same characters); the file is
        ``trial-<trial_id>.parquet``. One row per (sweep, trial_id).
    ``run_id`` string
        Free-form id of the run that produced the trial (e.g. a Ray Tune
        experiment/trial name or a job id).
    ``created_at`` timestamp[ms, tz=UTC]
        When the row was built.

Config (the run's configuration; every row is :meth:`raylab.record.RunRecord.row` of one run's record)
    ``model`` string            path or URL of the audited classifier's weights.
    ``arch`` string             its architecture name (e.g. ``resnet50``, ``small_cnn``).
    ``image_size`` int32        the model's input side in pixels.
    ``medical`` string          the medical dataset (``.npz``) the UAP is evaluated on.
    ``source_kind`` string      where the UAP's input images came from: ``shards``,
                                ``folder``, ``train`` (the medical training set) or
                                ``random`` (no images: the random control only).
    ``source`` string           the source's location (shard dir, image folder, ``train``, ``random``).
    ``method`` string           ``paper`` (the paper's iterative FGSM UAP) or ``sgd`` (stochastic gradient ascent on ρ).
    ``p`` string                the norm of the perturbation budget: ``"2"`` or ``"inf"``.
    ``zeta`` float64            ζ, the budget as a ratio of the medical training images' mean Lp norm.
    ``eps`` float64, nullable   ε, the paper's FGSM step size; null for ``sgd``.
    ``lr`` float64, nullable    ``sgd``'s first step as a fraction of the radius; null for ``paper``.
    ``max_passes`` int32        the most passes over the source (epochs for ``sgd``).
    ``delta`` float64           δ, the stop criterion on the fooling rate (0: run every pass).
    ``target`` string, nullable the target class name of a targeted UAP; null: non-targeted.
    ``batch_size`` int32        images per update (per worker in the engine; 1 in faithful mode).
    ``workers`` int32           attack workers (1 for a single-process run).
    ``step_norm`` string        how a step is normalised (e.g. ``sign``).
    ``clip`` bool               whether adversarial images were clipped to the pixel range.
    ``seed`` int64              the run's random seed.
    ``device`` string           ``cpu``, ``cuda``, ``cuda:0``, ...
    ``amp`` bool                whether mixed precision was on.

Metrics (on the medical test set)
    ``fooling_rate`` float64                  R_f of the UAP: share of test images whose label changes.
    ``success_rate`` float64, nullable        R_s of the target class under the UAP; null when non-targeted.
    ``random_fooling_rate`` float64           R_f of the random control (a random vector of the same norm).
    ``random_success_rate`` float64, nullable R_s of the target under the random control; null when non-targeted.
    ``clean_accuracy`` float64                accuracy without perturbation.
    ``balanced_accuracy`` float64, nullable   mean of the per-class recalls (null in version 2 rows).
    ``majority_accuracy`` float64, nullable   accuracy of always answering the test set's most frequent class: a
                                              model not clearly above it is warned about (null in version 2 rows).
    ``test_images`` int64                     number of test images evaluated.
    ``accepted`` int64                        attack steps accepted while building the UAP.
    ``images_processed`` int64                image visits of the attack over every pass (1,000 images x 2 passes = 2,000).
    ``images_skipped`` int64                  distinct source images that could not be decoded (each once).
    ``confusion_matrix`` list<list<float64>>  row-normalised confusion matrix, rows = clean
                                              label, columns = label under the UAP, in the
                                              order of ``class_names``.
    ``class_names`` list<string>              the classifier's class names.

Timing and artifacts
    ``wall_seconds`` float64                  seconds spent building the UAP (loading and evaluation
                                              excluded), the same in every writer.
    ``images_per_second`` float64, nullable   source images per second; null when none were processed.
    ``uap_uri`` string                        where the UAP (``uap.npy``) was written.
    ``uap_l2`` float64                        ||ρ||_2 of the UAP.
    ``uap_linf`` float64                      ||ρ||_∞ of the UAP.

Versions
    ``raylab_version``, ``torch_version``, ``ray_version`` string
        Versions installed where the trial ran (``""`` when a package is absent).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import InputError, one_line
from .store import Store, filesystem, is_url

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA",
    "SUMMARY_COLUMNS",
    "write_rows",
    "read_results",
    "summary_table",
    "select_best",
]

SCHEMA_VERSION = 3
#: Versions :func:`read_results` reads: this one, and version 2 (``sweep=<sweep>`` directories, no balanced or
#: majority accuracy: read as nulls).
READABLE_VERSIONS = {2: "sweep={sweep}", 3: "{sweep}"}

_NULLABLE = {"target", "success_rate", "random_success_rate", "images_per_second", "eps", "lr", "balanced_accuracy",
             "majority_accuracy"}


def _f(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=name in _NULLABLE)


SCHEMA: pa.Schema = pa.schema([
    # ids
    _f("schema_version", pa.int32()),
    _f("sweep", pa.string()),
    _f("trial_id", pa.string()),
    _f("run_id", pa.string()),
    _f("created_at", pa.timestamp("ms", tz="UTC")),
    # config
    _f("model", pa.string()),
    _f("arch", pa.string()),
    _f("image_size", pa.int32()),
    _f("medical", pa.string()),
    _f("source_kind", pa.string()),
    _f("source", pa.string()),
    _f("method", pa.string()),
    _f("p", pa.string()),
    _f("zeta", pa.float64()),
    _f("eps", pa.float64()),
    _f("lr", pa.float64()),
    _f("max_passes", pa.int32()),
    _f("delta", pa.float64()),
    _f("target", pa.string()),
    _f("batch_size", pa.int32()),
    _f("workers", pa.int32()),
    _f("step_norm", pa.string()),
    _f("clip", pa.bool_()),
    _f("seed", pa.int64()),
    _f("device", pa.string()),
    _f("amp", pa.bool_()),
    # metrics
    _f("fooling_rate", pa.float64()),
    _f("success_rate", pa.float64()),
    _f("random_fooling_rate", pa.float64()),
    _f("random_success_rate", pa.float64()),
    _f("clean_accuracy", pa.float64()),
    _f("balanced_accuracy", pa.float64()),
    _f("majority_accuracy", pa.float64()),
    _f("test_images", pa.int64()),
    _f("accepted", pa.int64()),
    _f("images_processed", pa.int64()),
    _f("images_skipped", pa.int64()),
    _f("confusion_matrix", pa.list_(pa.list_(pa.float64()))),
    _f("class_names", pa.list_(pa.string())),
    # timing and artifacts
    _f("wall_seconds", pa.float64()),
    _f("images_per_second", pa.float64()),
    _f("uap_uri", pa.string()),
    _f("uap_l2", pa.float64()),
    _f("uap_linf", pa.float64()),
    # versions
    _f("raylab_version", pa.string()),
    _f("torch_version", pa.string()),
    _f("ray_version", pa.string()),
])

SOURCE_KINDS = ("shards", "folder", "train", "random")
METHODS = ("paper", "sgd")
SUMMARY_COLUMNS = ("sweep", "trial_id", "arch", "source_kind", "method", "p", "zeta", "eps", "lr", "target",
                   "fooling_rate", "success_rate", "random_fooling_rate", "images_per_second")
SCHEMA_FILE = "_schema.json"
_ID = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9_.:@+-]{0,199}")
_INT_RANGE = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


# -- rows ---------------------------------------------------------------------------------------------------------

def _norm_p(p: object) -> str:
    key = str(p).strip().lower().removeprefix("l")
    if key in ("2", "2.0"):
        return "2"
    if key in ("inf", "infinity") or (isinstance(p, float) and math.isinf(p)):
        return "inf"
    raise InputError(f"p must be 2 or inf, got {p!r}")


# -- validation ---------------------------------------------------------------------------------------------------

def _where(row: dict[str, Any]) -> str:
    trial, sweep = row.get("trial_id"), row.get("sweep")
    return f"trial {trial!r} of sweep {sweep!r}" if sweep is not None else f"trial {trial!r}"


def _value(field: pa.Field, v: Any, where: str) -> Any:
    """``v`` checked (and lightly normalised) for ``field``; InputError naming the column otherwise."""
    name, t = field.name, field.type

    def bad(expected: str) -> InputError:
        return InputError(f"{where}: column {name!r} must be {expected}, got {type(v).__name__} {v!r:.60}")

    if v is None:
        if field.nullable:
            return None
        raise InputError(f"{where}: column {name!r} must not be null")
    if pa.types.is_string(t):
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if pa.types.is_boolean(t):
        if isinstance(v, np.bool_):
            v = bool(v)
        if not isinstance(v, bool):
            raise bad("a bool")
        return v
    if pa.types.is_integer(t):
        if isinstance(v, np.integer):  # numpy ints from a metrics pipeline are fine
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(f"an integer ({t})")
        lo, hi = _INT_RANGE[t.bit_width]
        if not lo <= v <= hi:
            raise InputError(f"{where}: column {name!r} = {v} does not fit {t}")
        return v
    if pa.types.is_floating(t):
        if isinstance(v, (np.floating, np.integer)):
            return float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number")
        return float(v)
    if pa.types.is_timestamp(t):
        if not isinstance(v, datetime):
            raise bad("a datetime")
        if v.tzinfo is None or v.utcoffset() is None:
            raise InputError(f"{where}: column {name!r} must be a timezone-aware datetime, got naive {v.isoformat()}")
        v = v.astimezone(timezone.utc)
        return v.replace(microsecond=v.microsecond // 1000 * 1000)
    if name == "confusion_matrix":
        if not isinstance(v, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in v):
            raise bad("a list of lists of numbers")
        item = pa.field(name, pa.float64())
        return [[_value(item, x, where) for x in r] for r in v]
    if name == "class_names":
        if not isinstance(v, (list, tuple)):
            raise bad("a list of strings")
        item = pa.field(name, pa.string())
        return [_value(item, x, where) for x in v]
    raise AssertionError(f"no validator for {field}")  # pragma: no cover


def _check_id(kind: str, v: Any, where: str) -> None:
    if not _ID.fullmatch(v):
        raise InputError(f"{where}: {kind} {v!r} must be 1-200 letters, digits or . _ - : @ + (not starting with '.')")


def _validate_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise InputError(f"a results row must be a dict, got {type(row).__name__}")
    where = _where(row)
    unknown = [k for k in row if k not in SCHEMA.names]
    if unknown:
        raise InputError(f"{where}: unknown column {unknown[0]!r}")
    out: dict[str, Any] = {}
    for field in SCHEMA:
        if field.name not in row:
            raise InputError(f"{where}: missing column {field.name!r}")
        out[field.name] = _value(field, row[field.name], where)
    if out["schema_version"] != SCHEMA_VERSION:
        raise InputError(f"{where}: column 'schema_version' is {out['schema_version']}; this raylab writes version {SCHEMA_VERSION}")
    _check_id("sweep", out["sweep"], where)
    if out["sweep"].startswith("_"):  # its directory would be hidden from readers (pyarrow skips "_" names)
        raise InputError(f"{where}: sweep {out['sweep']!r} must not start with '_'")
    _check_id("trial_id", out["trial_id"], where)
    if out["p"] not in ("2", "inf"):
        raise InputError(f"{where}: column 'p' must be \"2\" or \"inf\", got {out['p']!r}")
    if out["method"] not in METHODS:
        raise InputError(f"{where}: column 'method' must be one of {', '.join(METHODS)}, got {out['method']!r}")
    if out["source_kind"] not in SOURCE_KINDS:
        raise InputError(f"{where}: column 'source_kind' must be one of {', '.join(SOURCE_KINDS)}, got {out['source_kind']!r}")
    return out


# -- the dataset ----------------------------------------------------------------------------------------------------

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
    checked = [_validate_row(r) for r in rows]
    seen: set[tuple[str, str]] = set()
    for r in checked:
        key = (r["sweep"], r["trial_id"])
        if key in seen:
            raise InputError(f"{_where(r)}: appears twice in one write")
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


def _filter_expr(filters: dict[str, Any]) -> ds.Expression | None:
    expr = None
    for name, want in filters.items():
        if name not in SCHEMA.names:
            raise InputError(f"filter on unknown column {name!r}; columns are {', '.join(SCHEMA.names)}")
        field = SCHEMA.field(name)
        if pa.types.is_list(field.type):
            raise InputError(f"cannot filter on list column {name!r}")
        values = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
        if name == "p":
            values = [v if v is None else _norm_p(v) for v in values]
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
        if None in values:
            term = col.is_null() if term is None else term | col.is_null()
        if term is None:  # an empty list of wanted values matches nothing
            term = ds.scalar(False)
        expr = term if expr is None else expr & term
    return expr


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
    expr = _filter_expr(filters)
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


# -- views ----------------------------------------------------------------------------------------------------------

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


def _sorted_indices(table: pa.Table) -> list[int]:
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
    order = _sorted_indices(table)
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


#: Rows compete for "best" only within one sweep, medical set, model, source, method, target, ζ and i_max.
BEST_GROUP = ("sweep", "medical", "model", "arch", "source_kind", "source", "method", "target", "zeta", "max_passes")


def select_best(table: pa.Table) -> pa.Table:
    """The paper's selection: per :data:`BEST_GROUP` (ε and p compete, the model never), the row with the best score.

    The score is ``fooling_rate`` for a non-targeted row and ``success_rate`` when
    ``target`` is set (a null score ranks last). Ties go to the smaller ``eps``, then
    ``p`` ("2" before "inf"), then ``trial_id``. The result has the input's schema,
    one row per group, sorted by sweep, zeta, p, eps.
    """
    need = set(BEST_GROUP) | {"fooling_rate", "success_rate", "eps", "p", "trial_id"}
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
        eps = cols["eps"][i]
        rank = (-score, math.inf if eps is None else eps, cols["p"][i] or "", cols["trial_id"][i] or "")
        if group not in best or rank < best[group][0]:
            best[group] = (rank, i)
    chosen = table.take(pa.array(sorted(i for _, i in best.values()), type=pa.int64()))
    return chosen.take(pa.array(_sorted_indices(chosen), type=pa.int64()))

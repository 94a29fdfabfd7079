"""The results row: its columns, their types, and the one validation every written row passes.

Schema version 3 (:data:`SCHEMA`): the columns of version 2 plus ``balanced_accuracy`` and ``majority_accuracy``
(version 2 rows read them as nulls; where the files lie is :mod:`raylab.results.dataset`). One field at a time;
"not null" unless marked nullable.

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
    ``method`` string           ``paper`` (the paper's iterative FGSM UAP) or ``sgd`` (stochastic gradient ascent on ρ);
                                the random control records its sweep's first (noise has none; summaries show ``-``).
    ``p`` string                the norm of the perturbation budget: ``"2"`` or ``"inf"``.
    ``zeta`` float64            ζ, the budget as a ratio of the medical training images' mean Lp norm.
    ``eps`` float64, nullable   ε, the paper's FGSM step size; null for ``sgd`` and the random control.
    ``lr`` float64, nullable    ``sgd``'s first step as a fraction of the radius; null for ``paper`` and the random control.
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

import math
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError

SCHEMA_VERSION = 3

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
_ID = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9_.:@+-]{0,199}")
_INT_RANGE = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


def norm_p(p: object) -> str:
    """``p`` as the column stores it, ``"2"`` or ``"inf"`` (from 2, ``"l2"``, ``"linf"``, ``math.inf``, ...)."""
    key = str(p).strip().lower().removeprefix("l")
    if key in ("2", "2.0"):
        return "2"
    if key in ("inf", "infinity") or (isinstance(p, float) and math.isinf(p)):
        return "inf"
    raise InputError(f"p must be 2 or inf, got {p!r}")


def row_name(row: dict[str, Any]) -> str:
    """How an error names a row: its trial and sweep."""
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


def validate_row(row: Any) -> dict[str, Any]:
    """``row`` checked against :data:`SCHEMA` (every column, no other, each of its type; the ids, ``p``, ``method``
    and ``source_kind`` among their values), lightly normalised; an InputError naming the trial and column."""
    if not isinstance(row, dict):
        raise InputError(f"a results row must be a dict, got {type(row).__name__}")
    where = row_name(row)
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

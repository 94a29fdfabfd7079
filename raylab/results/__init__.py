"""Sweep results: one Parquet row per UAP, in one dataset that pandas, pyarrow, DuckDB, Polars and Ray Data open.

One concern a module:

- :mod:`~raylab.results.schema`: the row's columns (:data:`SCHEMA`, each one documented) and its validation;
- :mod:`~raylab.results.dataset`: the files of a results location, :func:`write_rows`, :func:`read_results` and
  one trial's :func:`read_row`;
- :mod:`~raylab.results.filters`: ``--filter column=value`` typed as its column, and the rows it keeps;
- :mod:`~raylab.results.seeds`: rows that differ only by their seed as one grid point, mean ± sd over seeds;
- :mod:`~raylab.results.naming`: the settings that tell rows apart, paths by their last part;
- :mod:`~raylab.results.summary`: the plain-text table ``raylab results`` prints;
- :mod:`~raylab.results.select`: the paper's selection of ε and p, :func:`select_best`.
"""

from .dataset import read_results, read_row, write_rows
from .filters import filter_value
from .schema import METHODS, SCHEMA, SCHEMA_VERSION, SOURCE_KINDS
from .seeds import over_seeds
from .select import BEST_GROUP, select_best
from .summary import SUMMARY_COLUMNS, summary_table

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA",
    "SOURCE_KINDS",
    "METHODS",
    "SUMMARY_COLUMNS",
    "BEST_GROUP",
    "write_rows",
    "read_results",
    "read_row",
    "filter_value",
    "summary_table",
    "select_best",
    "over_seeds",
]

"""A figure's file: the formats it is written in and its bytes. Every figure of raylab (the UAP pictures of
:mod:`raylab.plots`, the curves of :mod:`raylab.results.curves`, the audit's and the dashboard's) ends here; with no
torch, so `raylab results --plot` and `raylab dashboard render` start without it."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display: the same on a laptop, a cluster node or CI
import matplotlib.pyplot as plt  # noqa: E402

from .errors import InputError  # noqa: E402

__all__ = ["FIGURE_FORMATS", "figure_format", "plt", "png_bytes"]


#: The file formats a figure is written in, by the file name's extension (vector formats for papers).
FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(name: str) -> str:
    """The format of a figure file named ``name``, from its extension; InputError for one not in FIGURE_FORMATS."""
    base = name.rsplit("/", 1)[-1]
    fmt = base.rpartition(".")[2].lower() if "." in base else ""
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"{name}: a figure is written as {', '.join('.' + f for f in FIGURE_FORMATS)}; "
                         f"give a file name with one of those extensions")
    return fmt


def png_bytes(fig: "plt.Figure", *, dpi: int = 120, fmt: str = "png") -> bytes:
    """A figure as PNG bytes (or ``fmt``'s: pdf, svg), and closed: callers write them through
    :class:`raylab.store.Store`."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return buf.getvalue()

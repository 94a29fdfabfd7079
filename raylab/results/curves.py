"""A results table as curves: each rate over one column (ζ by default), mean ± sd over seeds, one curve per grid
point, the random control of the same norm dotted beside it (the paper's Figure 1, for any sweep).

A non-targeted point plots R_f, a targeted one R_s toward its target (Section 2.3); the two go to two panels.
Every other column of the grid point that varies over the table names its curve, so two models, sources or
methods are never drawn as one line. After ``--select best`` the step and p chosen per ζ (``chosen``) do not split
curves; each point is labelled with its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import InputError
from .naming import short_names, varying
from .seeds import POINT, over_seeds

#: The numeric columns of a grid point that a rate can be drawn over.
X_COLUMNS = ("zeta", "eps", "lr", "max_passes", "batch_size", "workers", "delta", "image_size")
#: The columns the random control has a value of: it has no step (null), and over any other setting (i_max, the
#: batch) its row carries the first trial's placeholder, so it is drawn only as each curve's dotted control.
CONTROL_X = ("zeta", "image_size")
#: What ``raylab results --select best`` chooses per ζ: never a reason for a new curve.
SELECTED = ("eps", "lr", "p")
#: Short names in a curve's label and a point's note.
_SHORT = {"source_kind": "source", "max_passes": "i_max", "zeta": "ζ", "eps": "ε"}


@dataclass(frozen=True)
class Curve:
    """One grid point's rate over ``x``: means and sds over seeds, and the random control's."""

    label: str
    targeted: bool
    x: list[float]
    rate: list[float]
    sd: list[float]
    random: list[float | None]
    random_sd: list[float | None]
    seeds: list[int]  #: how many seeds each point has
    notes: list[str] = field(default_factory=list)  #: the chosen step and p per point (after --select best)


def _short(column: str, value: Any) -> str:
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{_SHORT.get(column, column)}={shown}"


def curves(table: pa.Table, x: str = "zeta", *, chosen: tuple[str, ...] = ()) -> list[Curve]:
    """The curves of ``table`` (rows of a results location, one per trial) over the column ``x``.

    Rows that differ only by their seed are one point (:func:`raylab.results.seeds.over_seeds`); rows whose ``x``
    is null (ε of a stochastic-gradient row) are left out, and so are the random control's over a column it has no
    value of (:data:`CONTROL_X`). Columns in ``chosen`` (e.g. :data:`SELECTED`) neither
    split nor name curves. Raises :class:`InputError` in one line when there is nothing to draw.
    """
    if x not in X_COLUMNS:
        raise InputError(f"results: cannot plot over {x!r}; choose one of {', '.join(X_COLUMNS)}")
    if table.num_rows == 0:
        raise InputError("results: no rows to plot (check --filter)")
    points = [p for p in over_seeds(table).to_pylist() if p.get(x) is not None
              and (x in CONTROL_X or p.get("source_kind") != "random")]
    if not points:
        raise InputError(f"results: no row has a value of {x!r} to plot over")
    xs = sorted({p[x] for p in points})
    if len(xs) < 2:
        others = [c for c in X_COLUMNS if c != x and len({p.get(c) for p in points if p.get(c) is not None}) > 1]
        hint = f"; the rows vary in {', '.join(others)} (--x {others[0]})" if others else ""
        raise InputError(f"results: every row has {x}={xs[0]:g}, so there is no curve over it{hint}")
    keys = [c for c in POINT if c in table.column_names and c != x and c not in chosen]
    naming = varying(points, keys)
    if "source" in naming and "source_kind" in naming:
        naming.remove("source_kind")  # a source's kind follows from it
    names = {c: short_names(c, (p[c] for p in points)) for c in naming}
    notes = [c for c in chosen if c in table.column_names and len({p[c] for p in points}) > 1]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(tuple(p[c] for c in keys), []).append(p)
    out = []
    for members in groups.values():
        members.sort(key=lambda p: p[x])
        first = members[0]
        targeted = first.get("target") is not None
        rate = "success_rate" if targeted else "fooling_rate"
        out.append(Curve(
            label=", ".join(_short(c, names[c][first[c]]) for c in naming if first[c] is not None) or
            ("targeted" if targeted else "non-targeted"),
            targeted=targeted, x=[p[x] for p in members], rate=[p[rate] for p in members],
            sd=[p[f"{rate}_sd"] for p in members], random=[p[f"random_{rate}"] for p in members],
            random_sd=[p[f"random_{rate}_sd"] for p in members], seeds=[len(p["seeds"]) for p in members],
            notes=[" ".join(_short(c, p[c]) for c in notes if p[c] is not None) for p in members]
            if notes and first.get("source_kind") != "random" else []))  # the random control has no step
    return out


def _axis_name(x: str) -> str:
    return "ζ (%)" if x == "zeta" else _SHORT.get(x, x)


def curves_png(found: list[Curve], x: str = "zeta", *, title: str = "", fmt: str = "png") -> bytes:
    """The curves drawn as a PNG (or ``fmt``'s: pdf, svg): a panel for R_f and one for R_s where both kinds are
    there, one legend below them (the figure grows with it); rates in %."""
    from ..figures import plt, png_bytes

    panels = [kind for kind in (False, True) if any(c.targeted == kind for c in found)]
    rows = len(found) + 1 if len(panels) == 1 else (len(found) + 2) // 2  # the legend's lines, the control's included
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4 + 0.17 * rows), squeeze=False,
                             sharex=True, layout="constrained")
    colors = plt.get_cmap("tab10" if len(found) <= 10 else "tab20").colors
    scale = 100 if x == "zeta" else 1
    for ax, targeted in zip(axes[0], panels):
        noted = 0  # curves with notes so far: two curves that meet keep their notes apart, one above and one below
        for i, c in enumerate(found):
            if c.targeted != targeted:
                continue
            color = colors[i % len(colors)]
            xs = [scale * v for v in c.x]
            ax.errorbar(xs, [100 * r for r in c.rate], yerr=[100 * s for s in c.sd], fmt="-o", color=color, capsize=3,
                        label=c.label)
            rnd = [(v, r, s) for v, r, s in zip(xs, c.random, c.random_sd) if r is not None]
            if rnd:
                ax.errorbar([v for v, _, _ in rnd], [100 * r for _, r, _ in rnd], yerr=[100 * (s or 0) for _, _, s in rnd],
                            fmt=":", marker=".", color=color, alpha=0.6, capsize=2)
            for v, r, note in zip(xs, c.rate, c.notes):
                ax.annotate(note, (v, 100 * r), textcoords="offset points", xytext=(4, 4 if noted % 2 else -9), fontsize=6,
                            color=color)
            noted += bool(c.notes)
        seeds = sorted({n for c in found if c.targeted == targeted for n in c.seeds})
        over = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        spread = "1 seed, no sd" if seeds == [1] else f"mean ± sd over {over} seed{'s' if seeds[-1] > 1 else ''}"
        ax.set_title(f"{'Targeted: R_s toward the target' if targeted else 'Non-targeted: R_f'} ({spread})",
                     fontsize=10)
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel(f"{'success rate R_s' if targeted else 'fooling rate R_f'} (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ticks = sorted({scale * v for c in found for v in c.x})
    if len(ticks) <= 12:
        axes[0][0].set_xticks(ticks, [f"{t:g}" for t in ticks])
    entries = [entry for ax in axes[0] for entry in zip(*ax.get_legend_handles_labels())]
    (control,) = axes[0][0].plot([], [], ":", marker=".", color="grey")
    entries.append((control, "dotted: random noise of the same norm"))
    fig.legend(*zip(*entries), loc="outside lower center", fontsize=7, ncol=len(panels), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig, dpi=100, fmt=fmt)

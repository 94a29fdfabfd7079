"""A report as one list of blocks, written out as Markdown (its PNGs beside it) and as one self-contained HTML page
(CSS inline, every figure a ``data:`` URI, nothing fetched), so that the two never disagree.

A block is a tuple whose first item is its kind:

- ``("h1", text)``, ``("h2", text)``: headings;
- ``("verdict", text)``, ``("warning", text)``: a boxed sentence (the audit's verdict; a model near its baseline);
- ``("p", text)``: a paragraph; ``("list", [text, ...])``: a bulleted list;
- ``("table", header, rows)``: a table of strings;
- ``("figure", name, caption)``: the PNG ``name`` of the figures.

Text may hold Markdown's inline ``code`` (backticks) and **bold** (double stars); the HTML page renders both and
escapes everything else. Used by the audit's report (:mod:`raylab.audit.report`) and the reproduction's
(:mod:`raylab.report`).
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

Block = tuple[Any, ...]

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.verdict{background:#fdecea;border-left:6px solid #c62828;padding:.8rem 1rem;font-size:1.1rem}
.warning{background:#fff8e1;border-left:6px solid #f9a825;padding:.6rem 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f4f4f4}figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.85rem;color:#555}
code{font-size:.9em;background:#f4f4f4;padding:0 .2em}"""


def to_markdown(content: list[Block]) -> str:
    """The blocks as Markdown; a figure links its PNG by name (written beside the Markdown)."""
    lines: list[str] = []
    for b in content:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind in ("verdict", "warning"):
            lines += [f"> **{kind.capitalize()}.** {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + " --- |" * len(b[1])]
            lines += ["| " + " | ".join(row) + " |" for row in b[2]] + [""]
        elif kind == "figure":
            lines += [f"![{b[2]}]({b[1]})", ""]
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(lines)


def inline(text: str) -> str:
    """``text`` escaped for HTML, its `code` and **bold** marked up."""
    return _BOLD.sub(r"<strong>\1</strong>", _CODE.sub(r"<code>\1</code>", html.escape(text)))


def to_html(content: list[Block], figures: dict[str, bytes]) -> str:
    """One self-contained page: inline CSS, every figure a ``data:`` URI (a figure missing from ``figures`` is a
    KeyError, never a link to a file)."""
    e = html.escape
    title = next((_CODE.sub(r"\1", b[1]) for b in content if b[0] == "h1"), "raylab report")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title><style>{CSS}</style></head><body>"]
    for b in content:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{inline(b[1])}</{kind}>")
        elif kind in ("verdict", "warning"):
            parts.append(f"<p class={kind}><strong>{kind.capitalize()}.</strong> {inline(b[1])}</p>")
        elif kind == "p":
            parts.append(f"<p>{inline(b[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in b[1]) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in b[2])
                         + "</table>")
        elif kind == "figure":
            data = base64.b64encode(figures[b[1]]).decode()
            parts.append(f"<figure><img alt=\"{e(b[2])}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{inline(b[2])}</figcaption></figure>")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(parts) + "\n</body></html>\n"

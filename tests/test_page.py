"""raylab.page: one list of blocks, written as Markdown and as one self-contained HTML page that say the same."""

from __future__ import annotations

import base64
import re

import pytest

from raylab.page import to_html, to_markdown

from .html_page import Page



def _png() -> bytes:
    """A real PNG, drawn by raylab's plotting."""
    from raylab.figures import plt, png_bytes

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    return png_bytes(fig, dpi=50)


CONTENT = [
    ("h1", "report of `model <7>.pt`"),
    ("warning", "a model **near** its baseline"),
    ("verdict", "UAPs flip 36.0 % ± 27.7 % & more"),
    ("p", "plain <script>alert(1)</script> text with `code` and **bold**"),
    ("list", ["one `a`", "two & three"]),
    ("table", ["ζ (%)", "R_f"], [["4", "16.2 ± 3.2"], ["8", "<65.2>"]]),
    ("figure", "curve.png", "R_f against ζ"),
]


def test_markdown_and_html_say_the_same_and_the_page_fetches_nothing() -> None:
    png = _png()
    md = to_markdown(CONTENT)
    assert md.splitlines()[:5] == ["# report of `model <7>.pt`", "", "> **Warning.** a model **near** its baseline", "",
                                   "> **Verdict.** UAPs flip 36.0 % ± 27.7 % & more"]
    assert "| ζ (%) | R_f |\n| --- | --- |\n| 4 | 16.2 ± 3.2 |\n| 8 | <65.2> |" in md
    assert "![R_f against ζ](curve.png)" in md and "- one `a`\n- two & three" in md

    html = to_html(CONTENT, {"curve.png": png})
    page = Page(html)
    assert page.refs == ["data:image/png;base64," + base64.b64encode(png).decode()]  # the figure inline, nothing else
    assert page.tables == [[["ζ (%)", "R_f"], ["4", "16.2 ± 3.2"], ["8", "<65.2>"]]]  # the Markdown table's cells
    text = page.plain()
    assert "plain <script>alert(1)</script> text with code and bold" in text  # escaped: shown, never run
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<code>code</code>" in html and "<strong>bold</strong>" in html and "<code>model &lt;7&gt;.pt</code>" in html
    assert re.search(r"<title>report of model &lt;7&gt;\.pt</title>", html)
    assert html.index("class=warning") < html.index("class=verdict")


def test_a_figure_that_is_not_there_or_an_unknown_block_is_refused() -> None:
    with pytest.raises(KeyError, match="curve.png"):
        to_html(CONTENT, {})  # never a link to a file the page would need beside it
    for write in (to_markdown, lambda c: to_html(c, {})):
        with pytest.raises(ValueError, match="unknown block kind 'quote'"):
            write([("quote", "x")])

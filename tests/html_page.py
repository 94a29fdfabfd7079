"""Reading a report's HTML page back in tests: its references, images, text and tables (the standard library's
parser, nothing else)."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """``refs``: every src/href; ``images``: every img's src; ``text``: the text; ``tables``: each table's rows of
    cell texts (header row first)."""

    def __init__(self, html: str = "") -> None:
        super().__init__()
        self.refs: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        if html:
            self.feed(html)
            self.close()

    def handle_starttag(self, tag, attrs) -> None:
        for k, v in attrs:
            if k in ("src", "href"):
                self.refs.append(v or "")
                if tag == "img":
                    self.images.append(v or "")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def plain(self) -> str:
        """The text with its whitespace runs made single spaces."""
        return " ".join("".join(self.text).split())

"""Progress bars that read well where they are read: tqdm's bar on a terminal, plain lines elsewhere.

Under ``ray job submit`` (and in any pipe or log file) tqdm's bar is one line redrawn with carriage returns: Ray's
job log, which splits on newlines, held it as one ever-growing line that showed nothing until the bar closed. Off a
terminal, :func:`bar` writes each update as a line of its own, at most every :data:`LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

#: Seconds between two progress lines off a terminal.
LOG_INTERVAL = 30.0


class _Lines:
    """A file for tqdm that turns each redraw into one line (and drops the redraws that only clear the bar)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.out.write(line + "\n")

    def flush(self) -> None:
        self.out.flush()


def bar(*args: Any, file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` on a terminal; off one (a Ray job's log, a pipe), the same updates as plain lines,
    one every :data:`LOG_INTERVAL` seconds and one at the end."""
    out = sys.stderr if file is None else file
    if getattr(out, "isatty", lambda: False)():
        return tqdm(*args, file=out, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("maxinterval", LOG_INTERVAL)  # tqdm's monitor thread would redraw a slow bar every 10 s
    kwargs["leave"] = True  # a cleared bar leaves nothing in a log: keep its last line
    return tqdm(*args, file=_Lines(out), ascii=True, **kwargs)


def duration(seconds: float) -> str:
    """``"42 s"`` under a minute and a half, else ``"4.2 min"`` (where 0.0 min would read as nothing)."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"

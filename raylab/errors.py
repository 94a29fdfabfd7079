"""One root for raylab's own failures, so a CLI can print them as one line."""

from __future__ import annotations


class RaylabError(Exception):
    """Base class of every error raylab raises on purpose."""


class InputError(RaylabError, ValueError):
    """Bad input found before compute starts: a config value, a file, a shape.

    The message is one line and names the bad thing, e.g.
    ``zeta must be > 0, got -0.1``.
    """


class OutputError(RaylabError, OSError):
    """An output location that cannot be written (read-only, full, unreachable); names the location."""

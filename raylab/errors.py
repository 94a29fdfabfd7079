"""One root for raylab's own failures, so a CLI can print them as one line."""

from __future__ import annotations

import re


class RaylabError(Exception):
    """Base class of every error raylab raises on purpose."""


class InputError(RaylabError, ValueError):
    """Bad input found before compute starts: a config value, a file, a shape.

    The message is one line and names the bad thing, e.g.
    ``zeta must be > 0, got -0.1``.
    """


class OutputError(RaylabError, OSError):
    """An output location that cannot be written (read-only, full, unreachable); names the location."""


_ADDRESS = re.compile(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>")


def one_line(e: BaseException | str, limit: int = 200, *, with_type: bool = False) -> str:
    """An exception (or text) as one line of at most ``limit`` characters, for messages that name a file.

    Whitespace runs collapse to one space; webdataset's `` @ <stream>`` suffix is dropped; an object's repr with its
    memory address (PIL's ``cannot identify image file <_io.BytesIO object at 0x7f...>``) becomes its type
    (``<BytesIO>``), so a message recorded in metrics.json is the same in every run; ``with_type`` puts the
    exception's class name in front (``OSError: ...``).
    """
    if isinstance(e, str):
        text = e
    else:
        first = e.args[0] if e.args else None
        text = first if isinstance(first, str) else str(e)
        text = text.split(" @ ")[0]  # webdataset appends " @ <stream>" to its messages
    text = _ADDRESS.sub(r"<\1>", " ".join(text.split()))
    if isinstance(e, BaseException) and (with_type or not text):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_torch_file(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` could not read a file (weights or a checkpoint), as ``"Type: reason"``.
    For a pickle of anything but tensors torch's own message begins by suggesting ``weights_only=False``, which raylab
    never does: only its reason is kept (an unsupported operand, a blocked global such as ``posix.system``); a file cut
    short is said to be, without torch's paragraph about its zip reader."""
    text = str(e)
    if "Weights only load failed" in text:
        parts = [p.strip() for p in text.split("\n\n")[1:]]
        reasons = [p for p in parts if p and not p.startswith("Check the documentation")]
        text = f"not plain tensors, refused unread: {reasons[-1] if reasons else 'unsupported content'}"
    elif isinstance(e, EOFError):
        text = "the file ends before its data: empty or cut short"
    elif "failed finding central directory" in text:
        text = "not a whole torch file: cut short or damaged"
    return f"{type(e).__name__}: {one_line(text, 200)}"

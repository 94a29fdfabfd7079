"""A benchmark's figures: timing on the device, and the JSON they are written as."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch


def write_figures(figures: dict[str, Any], out: str | Path | None) -> None:
    """Print a benchmark's figures as JSON and, with ``out``, write them there (through the store)."""
    import json

    from ..store import Store

    text = json.dumps(figures, indent=2)
    print(text)
    if out is not None:
        store, name = Store.beside(out)
        store.write_text(name, text + "\n")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds, the GPU synchronized before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t

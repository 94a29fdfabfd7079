"""A benchmark's figures: timing on the device, the machine's CPU, and the JSON they are written as."""

from __future__ import annotations

import platform
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


def cpu_name() -> str:
    """The CPU's model name, for the machine a benchmark names (Linux's /proc/cpuinfo; elsewhere what ``platform``
    knows, often only the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds, the GPU synchronized before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t

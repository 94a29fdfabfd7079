"""Where an update's time goes: ``raylab bench --profile``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core import UAP


def profile_update(attack: UAP, model: torch.nn.Module, images: torch.Tensor, out: str | Path, *, seed: int = 0,
                   top: int = 12) -> list[dict[str, Any]]:
    """Where an update's time goes: ``attack`` over ``images`` under ``torch.profiler`` (CUDA kernels too on a GPU).

    Writes the op table (sorted by self time on the device, or on the CPU without one) to ``out`` and a Chrome trace
    to ``out`` with ``.json``; returns the ``top`` ops with their share of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    from ..store import Store

    cuda = next(model.parameters()).is_cuda
    attack(model, images, seed=seed)  # warm-up outside the profile (cuDNN autotune, allocator)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        attack(model, images, seed=seed)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    total = sum(getattr(e, key) for e in averages) or 1.0
    store, name = Store.beside(out)
    store.write_text(name, averages.table(sort_by=key, row_limit=40) + "\n")
    trace = Path(str(out)).with_suffix(".json")
    prof.export_chrome_trace(str(trace))
    ranked = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "share": getattr(e, key) / total, "calls": e.count} for e in ranked]

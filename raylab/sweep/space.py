"""Tune's search space of a sweep (:func:`param_space`) and a trial's axes read back from its config (:func:`axes_of`)."""

from __future__ import annotations

import math
from typing import Any

from .config import SweepConfig


def param_space(s: SweepConfig) -> dict[str, Any]:
    """Tune's search space: the axes only (the fixed settings go in through ``tune.with_parameters``).

    ``run`` is a UAP source with a method, its own step and i_max, named by its label (:meth:`SweepConfig.runs`), so
    the grid holds no sgd trial per ε (sgd has no ε) and Tune's trial table reads ``eps=0.008``. An axis
    of one value is a constant, not a column of that table: the table shows what tells the trials apart.
    """
    from ray import tune

    pick = tune.grid_search if s.search == "grid" else tune.choice
    return {k: pick(v) if len(v) > 1 else v[0] for k, v in _axes(s).items()}


def trial_count(s: SweepConfig) -> int:
    """The trials the sweep makes: every combination of its axes (a grid), or ``num_samples`` draws."""
    return math.prod(len(v) for v in _axes(s).values()) if s.search == "grid" else s.num_samples


def _axes(s: SweepConfig) -> dict[str, list[Any]]:
    return {"model": list(s.model_labels()), "run": list(s.runs()), "p": list(s.p), "zeta": list(s.zeta),
            "target": list(s.targets), "seed": list(s.seeds)}


def axes_of(config: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None,
            models: dict[str, str] | None = None) -> dict[str, Any]:
    """A trial's config as one flat dict of axes: ``source``, ``attack`` and ``max_passes`` out of ``run``, a label of
    ``runs`` (:meth:`SweepConfig.runs`), and ``model`` a path, out of its label in ``models``
    (:meth:`SweepConfig.model_labels`). A trial restored from an older sweep holds the model's path, the run itself,
    or (before ``run`` existed) the axes flat already."""
    run = config.get("run", {})
    flat = {**{k: v for k, v in config.items() if k != "run"}, **((runs or {})[run] if isinstance(run, str) else run)}
    if "model" in flat:
        flat["model"] = (models or {}).get(flat["model"], flat["model"])
    return flat

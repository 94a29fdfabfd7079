"""Where the engine's actors go: into the placement group that reserved them, or spread over the cluster.

A sweep trial (:meth:`raylab.sweep.SweepConfig.bundles`) reserves, through Tune's placement group, a bundle for the
trial itself (Tune's head bundle, index 0), then one per engine worker and one per reader. Tune captures the
trial's child actors into that group, but an actor given its own scheduling strategy (``SPREAD``) leaves it: the
reserved bundles then sit idle while the actors ask the cluster for as much again, and on a cluster sized for the
reservation they never start. So inside a placement group each actor is pinned to an unused bundle of exactly its
shape (first fit, after the head bundle), and outside one the actors are spread over the nodes when asked.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def _shape(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if v}


def bundle_indices(bundles: list[dict[str, float]], demands: list[dict[str, float]]) -> list[int]:
    """For each demand, the first bundle after the head bundle (index 0) of exactly its shape that no earlier demand
    took; -1 (any bundle with room) when there is none."""
    free = list(range(1, len(bundles)))
    out = []
    for demand in demands:
        i = next((b for b in free if _shape(bundles[b]) == _shape(demand)), None)
        if i is not None:
            free.remove(i)
        out.append(-1 if i is None else i)
    return out


def placement(demands: list[dict[str, float]], *, spread: bool) -> list[dict[str, Any]]:
    """Ray ``.options(...)`` scheduling arguments for actors with these resource demands, in order."""
    pg = get_current_placement_group() if ray.is_initialized() else None
    if pg is None:
        return [{"scheduling_strategy": "SPREAD"} if spread else {} for _ in demands]
    return [{"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)}
            for i in bundle_indices(pg.bundle_specs, demands)]

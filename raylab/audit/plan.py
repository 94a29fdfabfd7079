"""The audit's UAPs as jobs: both sources over the ζ grid, then toward each target at the verdict's ζ, each with
every method and seed."""

from __future__ import annotations

from dataclasses import dataclass

from ..target import resolve_target
from .config import SOURCES, AuditConfig


@dataclass(frozen=True)
class Job:
    """One UAP of the audit: its source, ζ, target class (an index; None: non-targeted), method and seed."""

    source: str
    zeta: float
    target: int | None
    method: str
    seed: int

    @property
    def trial_id(self) -> str:
        """``natural-z0.04-u-sgd-s1``; targeted UAPs name their class by index (``-t1-``), since class names may hold
        any character."""
        return f"{self.source}-z{self.zeta:g}-{'u' if self.target is None else f't{self.target}'}-{self.method}-s{self.seed}"


def plan_jobs(config: AuditConfig, targets: tuple[int, ...]) -> list[Job]:
    """Every UAP of the audit: both sources over the ζ grid, then toward each target at the headline ζ."""
    plan = config.plan
    untargeted = [(s, z, None) for z in plan.zetas for s in SOURCES]
    targeted = [(s, config.zeta, t) for t in targets for s in SOURCES]
    return [Job(s, z, t, m, seed) for s, z, t in untargeted + targeted for m in config.methods for seed in range(plan.seeds)]


def audit_targets(config: AuditConfig, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The class indices of ``config.targets`` ('all': every class; 'none': none); InputError naming a bad one."""
    words = [w.lower() for w in config.targets]
    if words == ["all"]:
        return tuple(range(len(class_names)))
    if words == ["none"]:
        return ()
    found = [resolve_target(t, class_names) for t in config.targets]
    return tuple(dict.fromkeys(t for t in found if t is not None))

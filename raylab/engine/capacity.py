"""Whether the cluster can hold what a run asks for, said in one line before anything waits for it.

A local Ray that a command started itself (no ``--address``, no ``ray job submit``) is one node that no other will
join, so an ask beyond it would wait forever: the commands refuse it at once. On a cluster that can grow the same
shortfall is only a warning, since the autoscaler sees pending actors and tasks as demand.
"""

from __future__ import annotations

import ray

from ..errors import InputError


def _have() -> tuple[float, float]:
    """The cluster's CPUs and GPUs now."""
    have = ray.cluster_resources()
    return have.get("CPU", 0.0), have.get("GPU", 0.0)


def shortfall(cpu: float, gpu: float = 0.0) -> str | None:
    """``"need X CPU and Y GPU, the cluster has A CPU and B GPU"`` when the cluster has less than that now; else None."""
    have_cpu, have_gpu = _have()
    if cpu <= have_cpu and gpu <= have_gpu:
        return None
    return f"need {cpu:g} CPU and {gpu:g} GPU, the cluster has {have_cpu:g} CPU and {have_gpu:g} GPU"


#: What to do when the GPUs are short: every engine worker under ``--device cuda`` asks for one.
GPU_FIX = "each worker asks for a GPU under --device cuda: use --device cpu here, or fewer --workers"


def refuse_on_local_ray(what: str, cpu: float, gpu: float = 0.0, *, fix: str, gpu_fix: str = GPU_FIX) -> None:
    """InputError ``"<what> <short> (...: no node will join); <fix>"`` when this process's own local Ray cannot hold
    ``cpu``/``gpu`` at once (``fix`` when the CPUs are short, ``gpu_fix`` when the GPUs are); call it only where the
    command started that Ray."""
    short = shortfall(cpu, gpu)
    if short:
        have_cpu, have_gpu = _have()
        fixes = [f for f, lacking in ((fix, cpu > have_cpu), (gpu_fix, gpu > have_gpu)) if lacking]
        raise InputError(f"{what} {short} (a local Ray started by this run: no node will join); {'; '.join(fixes)}")

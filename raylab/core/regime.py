"""The weak regime: a run that updates ρ too few times (measured in benchmarks/batch_size.py).

A cluster's effective batch is ``workers x batch``; over a short stream that can leave a run with one or two
updates of ρ, where both methods are far weaker than with a few more (the README's batch-size study).
"""

from __future__ import annotations


#: Updates of ρ in a run below which each method is weak (benchmarks/batch_size.py, docs/bench/cpu-batch-size.json: 1,000
#: photos, L2 ζ = 4 %, 3 seeds, the exemplar-pretrained ResNet-18). The paper's method: one update, R_f 0.061 on every
#: seed, where 2 to 3,000 updates (1 or 3 passes) gave 0.17-0.22. The stochastic-gradient one: 1 to 3 steps 0.04-0.08,
#: where 6 to 96 steps gave 0.31-0.36.
MIN_UPDATES = {"paper": 2, "sgd": 6}
_MEASURED = {"paper": "R_f 0.06 with one update against 0.17-0.22 with 2 or more",
             "sgd": "R_f 0.04-0.08 with 1-3 steps against 0.31-0.36 with 6 or more"}


def weak_regime(images: int, batch: int, *, passes: int = 1, method: str = "paper") -> str | None:
    """A warning when ``passes`` over ``images`` at an effective ``batch`` (workers x batch in the engine) update ρ
    fewer than :data:`MIN_UPDATES` times for ``method``; None otherwise."""
    need = MIN_UPDATES[method]
    updates = passes * -(-images // batch)
    if updates >= need:
        return None
    largest = max(1, images // -(-need // passes))  # the largest batch that makes `need` updates in `passes` passes
    return (f"warning: {images} images x {passes} pass(es) at an effective batch of {batch} make {updates} update(s) of "
            f"rho; fewer than {need} is the weak regime of the {method} method ({_MEASURED[method]}, see the README's "
            f"batch-size study): use a batch of at most {largest} (fewer workers or a smaller --batch-size), more "
            "passes, or a longer stream")

"""What an audit chooses on the medical **validation** split, never the test split (Sections 2.2-2.3).

- Each method's step and p: the paper's grid search (Section 2.2, ε and p "selected using a grid search to maximize
  the performance of the UAPs"), one non-targeted UAP per candidate and seed, scored by its mean R_f over the seeds
  on the validation images (:func:`select_on_validation`, :func:`best`); the audit and the reproduction both choose
  this way, over their own seeds. Each candidate is built from the very images (and passes, batch) the chosen
  step will make its UAPs from: how many steps a UAP accumulates grows with its stream, so a step chosen on fewer
  images suits fewer updates. Chosen on 300 of the 1,000 photos, EfficientNet-Lite0's pick was ε = 0.016 on each
  of 3 seeds; on all 1,000, ε = 0.008 on each, at nearly twice the validation R_f
  (``benchmarks/selection_images.py``).
- The strongest of a cell's seeds (:func:`kept_on_validation`), which the audit's verdict gives beside the mean.

A dataset without a validation split lends a seeded share of its training images (:func:`validation_images`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import UAPConfig
from .core import Untargeted, fooling_rate, predict_labels
from .models import for_inference
from .progress import bar as progress_bar
from .run import generate
from .spread import spread
from .target import Target

#: Share of the training images held out for the ε, p selection when the dataset has no validation split.
HELD_OUT = 0.1


def validation_images(target: Target, seed: int) -> tuple[Tensor, str]:
    """The medical validation images, or a held-out share of the training images when the dataset has none."""
    m = target.medical
    if len(m.val_images):
        return m.val_images, f"the validation split ({len(m.val_images)} images)"
    n = max(1, int(HELD_OUT * len(m.train_images)))
    return (seeded_subset(m.train_images, n, seed),
            f"{n} training images held out at random (the dataset has no validation split)")


def select_on_validation(target: Target, images: Tensor, val_images: Tensor, candidates: list[UAPConfig], *,
                         zeta: float, seeds: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """Section 2.2's grid search: a non-targeted UAP per candidate configuration and seed from ``images`` (those its
    UAPs will be made from), scored by R_f on ``val_images``, and each candidate by its mean over the ``seeds`` (the
    image order): a fooling rate from one seed is one sample, and a step whose seeds land in different basins must
    not win on one of them.

    Returns one row per candidate (``p``, ``eps``, ``lr``, ``val_fooling_rate``: the mean, ``val_fooling_rate_sd``,
    ``val_per_seed``), in the candidates' order.
    """
    grid = []
    # One bar over the grid's UAPs (stderr, cleared when done or interrupted): at the paper's scale one selection
    # makes 24 UAPs of 100,000 images each.
    with progress_bar(total=len(candidates) * len(seeds), desc="ε, p selection", unit="uap", leave=False) as bar:
        prepared: dict[tuple[str, bool, bool], tuple[torch.nn.Module, Tensor]] = {}
        for config in candidates:
            # the model as the candidate's UAPs run it (``run.run_uap``): the same memory layout, so the same rounding; a
            # stochastic-gradient UAP made in another layout parts ways with them (cpu-small's Lite0: validation R_f
            # 0.336 here against 0.303 for the study's own UAP of the same seed, before this). Prepared, and the clean
            # validation labels predicted, once per setting the candidates share (a compiled model compiles once).
            setting = (config.device, config.amp, config.compile)
            if setting not in prepared:
                model = for_inference(target.model, device=config.device, amp=config.amp, compile=config.compile)
                prepared[setting] = model, predict_labels(model, val_images)
            model, clean = prepared[setting]
            radius = target.with_budget(zeta=zeta, p=config.p, target=None).radius
            rates = []
            for seed in seeds:
                rho, _, _ = generate(dataclasses.replace(config, seed=seed), model, images, Untargeted(), radius)
                rates.append(fooling_rate(clean, predict_labels(model, val_images, rho=rho)))
                bar.update()
            over = spread(rates)
            assert over is not None
            grid.append({"p": str(config.p), "eps": config.eps, "lr": config.lr, "val_fooling_rate": over["mean"],
                         "val_fooling_rate_sd": over["sd"], "val_per_seed": rates})
    return grid


def best(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid's row with the highest validation R_f, its mean over seeds (the first of equals)."""
    return max(grid, key=lambda r: r["val_fooling_rate"])


def seeded_subset(images: Tensor, n: int, seed: int) -> Tensor:
    """``n`` of ``images`` (all when fewer) in a seeded random order."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def kept_on_validation(model: torch.nn.Module, val_images: Tensor, rows: list[dict[str, Any]], *,
                       score: Callable[[Tensor], float], rate: str = "fooling_rate") -> dict[str, Any]:
    """The strongest of a cell's UAPs, found without the test split: each seed's ρ (its ``uap.npy``) scored on the
    validation images by ``score`` of their labels under it (R_f, or R_s toward the cell's target), as the ε, p
    selection scores its grid; the highest is kept (the first of equals) and its test ``rate`` reported. The mean over
    seeds is what one UAP does on average; this is what an attacker who makes as many and keeps the best does, and
    the audit must not under-report it."""
    val = [score(predict_labels(model, val_images, rho=torch.from_numpy(np.load(r["uap_uri"])))) for r in rows]
    k = max(range(len(rows)), key=lambda i: val[i])
    return {"validation": val, "seed": rows[k]["seed"], "val_rate": val[k], "rate": rows[k][rate],
            "uap_uri": rows[k]["uap_uri"]}

"""Lp norms, the ζ budget, projection onto the Lp ball and the random control.

Paper, Section 2.2: the UAP ρ obeys ``||ρ||_p <= ζ``, with ζ set as a *ratio*
of the mean Lp norm of an image in the medical dataset. The authors'
``run_Natural_UAP.py`` turns that ratio into a radius in model space as
``zeta * mean(||x_raw||_p) / 128`` (raw 0-255 training images).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Norm = Literal[2, "inf"]
NORMS: tuple[Norm, ...] = (2, "inf")


def parse_norm(p: object) -> Norm:
    """Accept 2, "2", "l2", inf, "inf", "linf" (any case); anything else is a ValueError."""
    key = str(p).strip().lower().removeprefix("l")
    if key in ("2", "2.0"):
        return 2
    if key in ("inf", "infinity") or (isinstance(p, float) and math.isinf(p)):
        return "inf"
    raise ValueError(f"p must be 2 or inf, got {p!r}")


def check_norm(p: object) -> Norm:
    """``p`` itself when it is 2 or "inf"; anything else (the text "2", ``math.inf``) is a ValueError, never another
    norm by default: a radius for the wrong norm is a silently wrong budget (:func:`parse_norm` reads text)."""
    if p not in NORMS:
        raise ValueError(f"p must be 2 or 'inf' (parse_norm reads '2', 'l2', 'inf', ...), got {p!r}")
    return p  # type: ignore[return-value]


def lp_norm(x: Tensor, p: Norm) -> Tensor:
    """Per-sample Lp norm over all but the first dimension."""
    flat = x.reshape(x.shape[0], -1)
    return flat.norm(p=2, dim=1) if check_norm(p) == 2 else flat.abs().amax(dim=1)


def zeta_radius(train_images: Tensor, *, zeta: float, p: Norm) -> float:
    """The paper's budget: ``zeta * mean ||x_raw||_p / 128`` over raw 0-255 images.

    Section 2.2 ("ζ was set based on the ratio of the Lp norm of the UAP to the
    average Lp norm of an image in the dataset"); /128 maps the radius into
    model space (:mod:`raylab.core.pixels`). Each norm is over the whole image,
    every channel, as the authors' ``run_Natural_UAP.py`` computes it
    (``np.linalg.norm(img)``, ``abs(img).max()`` over the raw training images).
    Norms are taken in float64.
    """
    if not zeta > 0:
        raise ValueError(f"zeta must be > 0, got {zeta}")
    norms = [lp_norm(chunk.to(torch.float64), p) for chunk in train_images.split(1024)]
    return float(zeta * torch.cat(norms).mean() / 128.0)


def project_lp(rho: Tensor, *, radius: float, p: Norm) -> Tensor:
    """Project ρ (one perturbation, any shape) onto the Lp ball of ``radius``.

    p=2 rescales, p=inf clips, as ART's ``projection`` does for UAPs.
    """
    if check_norm(p) == "inf":
        return rho.clamp(-radius, radius)
    # rho * min(1, r / ||rho||) without reading the norm on the host: no sync on a GPU, rho itself when inside.
    return rho * (radius / rho.norm(p=2)).clamp(max=1.0)


def random_sphere(shape: tuple[int, ...], *, radius: float, p: Norm, generator: torch.Generator) -> Tensor:
    """A vector drawn uniformly from the Lp *sphere* of ``radius`` (the random control, Section 2.2).

    p=2: a normalized Gaussian. p=inf: uniform on the surface of the cube, i.e.
    every coordinate uniform in [-r, r] and one coordinate, chosen uniformly, set
    to ±r.
    """
    if check_norm(p) == 2:
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        return (g * (radius / g.norm())).to(torch.float32)
    u = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * radius
    flat = u.view(-1)
    face = int(torch.randint(flat.numel(), (1,), generator=generator))
    sign = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
    flat[face] = sign * radius
    return u.to(torch.float32)

"""``raylab evaluate``: a finished UAP evaluated on a model, which need not be the one it was made on.

A UAP made on one model (a surrogate, another architecture, another team's run) and applied to another is the
transfer an auditor of a model an attacker cannot query asks about. The paper makes each architecture's UAP on that
architecture (Section 3.1); ``raylab reproduce``'s cross-architecture matrix asks the transfer of its own models, and
this asks it of one perturbation file.
The UAP is loaded as it was written (``uap.npy``, C × H × W in [0, 1] pixel units), checked against the model's input,
and evaluated as every raylab UAP is (:func:`raylab.evaluation.evaluate`): R_f, R_s of a target, their confusion
matrices, and the random control of the UAP's own norm (Section 2.3). Its size is also given as ζ, the share of the
mean norm of this model's medical training images (Section 2.2), so it compares with the budgets of raylab's runs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import EvaluateConfig
from .core import VALID_RANGE, lp_norm, predict_labels
from .errors import InputError, one_line
from .evaluation import Evaluation, evaluate
from .models import for_inference
from .store import Store
from .target import Target, load_target


@dataclass(frozen=True)
class UAPEvaluation:
    """One UAP on one model: its norm, that norm as ζ of the model's medical images, and the evaluation."""

    config: EvaluateConfig
    norm: float
    zeta: float
    evaluation: Evaluation

    def summary(self) -> str:
        e, p = self.evaluation, self.config.p
        lines = [f"UAP {self.config.uap}: ||rho||_{p} = {self.norm:.4g}, zeta = {self.zeta:.2%} of the mean L{p} norm of "
                 f"{self.config.medical}'s training images; on {self.config.model}"]
        warning = e.baseline_warning()
        if warning:
            lines.append(warning)
        lines.append(e.rates_line())
        return "\n".join(lines)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: the evaluation's fields (as a run's), the UAP's norm and ζ, and the configuration."""
        return {**self.evaluation.to_dict(), "uap_norm": self.norm, "zeta": self.zeta, "config": self.config.to_dict()}


def read_uap(location: str) -> Tensor:
    """``uap.npy`` (path or URL) as a float32 C × H × W tensor; InputError naming the file for anything else."""
    store, name = Store.beside(location)
    data = store.read_bytes(name)
    if not data.startswith(b"\x93NUMPY"):
        raise InputError(f"UAP {location}: not a .npy file (raylab writes a UAP as uap.npy, numpy's format)")
    try:
        rho = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # cut short, or an array of objects (never unpickled)
        raise InputError(f"UAP {location}: cannot read this .npy file ({one_line(e, 100)})") from None
    if rho.ndim != 3 or not np.issubdtype(rho.dtype, np.floating) or not np.isfinite(rho).all():
        raise InputError(f"UAP {location}: a UAP is a finite float C x H x W array (uap.npy); this is "
                         f"{rho.dtype} of shape {rho.shape}")
    return torch.from_numpy(rho.astype(np.float32))


def check_fits(rho: Tensor, target: Target, config: EvaluateConfig) -> None:
    """The UAP has the model's input shape: it is added to the images as made, never resized (a resized UAP is
    another perturbation, of another norm)."""
    if tuple(rho.shape) != tuple(target.image_shape):
        raise InputError(f"UAP {config.uap} is {'x'.join(map(str, rho.shape))} (C x H x W), but {config.model} takes "
                         f"{'x'.join(map(str, target.image_shape))}: a UAP is evaluated at the channels and size it was "
                         "made at (make one for this model with raylab uap)")


def evaluate_uap(config: EvaluateConfig) -> UAPEvaluation:
    """Load the UAP and the model (each checked, one line naming the bad one, before any compute), evaluate, and
    write ``metrics.json`` and ``confusion.png`` into ``config.out`` when given."""
    rho = read_uap(config.uap)
    # ζ = 1 gives the mean norm of the medical training images as the radius: the UAP's ζ is its norm over that
    target = load_target(config.model, config.medical, target=config.target, zeta=1.0, p=config.p, device=config.device)
    check_fits(rho, target, config)
    store = Store.at(config.out) if config.out else None
    if store is not None:
        store.makedirs()  # an output that cannot be one is refused before the evaluation
    norm = float(lp_norm(rho[None], config.p))
    model = for_inference(target.model, device=config.device, amp=config.amp)
    clip = VALID_RANGE if config.clip else None

    def predict(images: Tensor, r: Tensor | None) -> Tensor:
        return predict_labels(model, images, rho=r, clip=clip, amp=config.amp)

    medical = target.medical
    evaluation = evaluate(predict, rho, test_images=medical.test_images, test_labels=medical.test_labels,
                          class_names=target.class_names, target=target.target, radius=norm, p=config.p, seed=config.seed)
    result = UAPEvaluation(config, norm, norm / target.radius, evaluation)
    if store is not None:
        from . import plots

        store.write_text("metrics.json", json.dumps(result.metrics(), indent=2))
        store.write_bytes("confusion.png", plots.confusion_png(torch.tensor(evaluation.uap.confusion_matrix),
                                                               evaluation.class_names,
                                                               title=f"{config.uap} on {config.model}"))
    return result

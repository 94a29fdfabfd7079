"""What counts as fooled: criteria as values (after foolbox's ``Misclassification``).

The same UAP loop serves the non-targeted attack (Moosavi-Dezfooli et al. 2017,
as in ART's ``UniversalPerturbation``) and the targeted one (Hirano & Takemoto
2020, ART's ``TargetedUniversalPerturbation``); they differ only in the four
rules below (paper, Section 2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class Untargeted:
    """Fooled = the label differs from the clean label."""

    #: FGSM ascends the loss of the clean label.
    sign: ClassVar[float] = 1.0

    def active(self, current: Tensor, clean: Tensor) -> Tensor:
        """Images still to attack: their label under x+ρ is still the clean label."""
        return current == clean

    def loss_labels(self, clean: Tensor) -> Tensor:
        return clean

    def accepted(self, new: Tensor, current: Tensor) -> Tensor:
        """A step is kept when it changes the label."""
        return new != current

    def score(self, clean: Tensor, adversarial: Tensor) -> float:
        """The fooling rate R_f (Section 2.3)."""
        return float((clean != adversarial).float().mean())

    def __repr__(self) -> str:
        return "Untargeted()"


@dataclass(frozen=True)
class Targeted:
    """Fooled = the label is the target class y."""

    target: int
    #: FGSM descends the loss of the target.
    sign: ClassVar[float] = -1.0

    def active(self, current: Tensor, clean: Tensor) -> Tensor:
        """Images not yet classified as the target."""
        return current != self.target

    def loss_labels(self, clean: Tensor) -> Tensor:
        return torch.full_like(clean, self.target)

    def accepted(self, new: Tensor, current: Tensor) -> Tensor:
        """A step is kept when it reaches the target."""
        return new == self.target

    def score(self, clean: Tensor, adversarial: Tensor) -> float:
        """The targeted success rate R_s (Section 2.3; already-target images count)."""
        return float((adversarial == self.target).float().mean())

    def __repr__(self) -> str:
        return f"Targeted({self.target})"


Criterion = Untargeted | Targeted

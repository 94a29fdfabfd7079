"""The algorithm, in pure PyTorch: no Ray, no I/O, no globals.

Read beside the paper (Minagi et al., J. Imaging 2022, Section 2.2-2.3):
:mod:`.pixels` (the space a UAP lives in), :mod:`.norms` (ζ budget,
projection, random control), :mod:`.fgsm` (the inner step),
:mod:`.criteria` (non-targeted vs targeted), :mod:`.uap` (the iterative
algorithm, faithful and batched, on the batch rules of :mod:`.updates`;
:mod:`.graphs` replays a step from a CUDA graph, :mod:`.transfer` overlaps a
batch's copy to the GPU with the last one's compute, :mod:`.regime` warns of too
few updates), :mod:`.sgd` (the stochastic-gradient UAP,
the stronger attack beside the paper's) and :mod:`.metrics` (R_f, R_s,
confusion matrices, label composition).
"""

from .criteria import Criterion, Targeted, Untargeted
from .fgsm import StepNorm, direction, fgsm_step, input_gradient
from .metrics import confusion_matrix, fooling_rate, label_composition, predict_labels, success_rate
from .norms import NORMS, Norm, lp_norm, parse_norm, project_lp, random_sphere, zeta_radius
from .pixels import VALID_RANGE, as_model_input, to_model_space, to_unit_range
from .sgd import SGDUAP, batch_gradient, sgd_step, step_size
from .regime import MIN_UPDATES, weak_regime
from .uap import UAP, PassState, UAPResult
from .updates import BatchUpdate, MaskedUpdate, StepStats, batch_update, masked_update

__all__ = [
    "Criterion", "Targeted", "Untargeted",
    "StepNorm", "direction", "fgsm_step", "input_gradient",
    "confusion_matrix", "fooling_rate", "label_composition", "predict_labels", "success_rate",
    "NORMS", "Norm", "lp_norm", "parse_norm", "project_lp", "random_sphere", "zeta_radius",
    "VALID_RANGE", "as_model_input", "to_model_space", "to_unit_range",
    "MIN_UPDATES", "UAP", "PassState", "BatchUpdate", "MaskedUpdate", "StepStats", "UAPResult", "batch_update", "masked_update", "weak_regime",
    "SGDUAP", "batch_gradient", "sgd_step", "step_size",
]

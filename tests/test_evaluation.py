"""The model is checked before its UAP is read: clean accuracy beside the majority-class baseline and balanced
accuracy, and a warning when the model is no better than a constant answer."""

from __future__ import annotations

import torch

from raylab.evaluation import evaluate

from .conftest import PNEUMONIA


def _labels() -> torch.Tensor:
    import numpy as np

    with np.load(PNEUMONIA) as z:
        return torch.from_numpy(z["test_labels"].reshape(-1)).long()  # 234 NORMAL, 390 PNEUMONIA


def _run(predict_clean):
    labels = _labels()
    images = torch.zeros(len(labels), 1, 4, 4)
    return evaluate(lambda x, rho: predict_clean(labels), torch.zeros(1, 4, 4), test_images=images, test_labels=labels,
                    class_names=("NORMAL", "PNEUMONIA"), target=None, radius=1.0, p=2, seed=0)


def test_a_constant_answer_is_flagged_with_the_majority_baseline() -> None:
    e = _run(lambda labels: torch.ones_like(labels))  # always PNEUMONIA, the most frequent class
    assert abs(e.majority_accuracy - 390 / 624) < 1e-9 and e.clean_accuracy == e.majority_accuracy
    assert e.balanced_accuracy == 0.5 and e.class_accuracy == {"NORMAL": 0.0, "PNEUMONIA": 1.0}
    assert e.baseline_warning().startswith("warning: clean accuracy 0.625 is not above always answering")
    assert e.to_dict()["majority_accuracy"] == e.majority_accuracy


def test_a_good_model_gets_no_warning() -> None:
    flip = torch.Generator().manual_seed(0)
    e = _run(lambda labels: torch.where(torch.rand(len(labels), generator=flip) < 0.1, 1 - labels, labels))
    assert 0.85 < e.clean_accuracy < 0.95 and 0.85 < e.balanced_accuracy < 0.95
    assert e.baseline_warning() is None

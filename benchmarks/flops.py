"""FLOPs of one batched update of one image for the paper's architectures, counted (not timed) on CPU.

One update costs a clean forward, a forward with autograd and its input-gradient backward, and the acceptance
forward (``raylab.bench.update_flops``, ``torch.utils.flop_counter``); divided by a measured rate in images/s it
gives TFLOP/s and the fraction of a device's limit, and for an architecture not yet timed on a GPU an estimate of its
rate at the efficiency another one reached (labelled so wherever it is used).

    python benchmarks/flops.py --out docs/bench/update-flops.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raylab.bench import update_flops, write_figures  # noqa: E402
from raylab.models import ModelSpec, build_model  # noqa: E402

MODELS = (("inception_v3", 299), ("resnet50", 224), ("vgg16", 224), ("resnet18", 64), ("efficientnet_lite0", 64))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    figures: dict = {"how": "torch.utils.flop_counter on CPU, float32, one image; FLOPs = 2 x multiply-adds of "
                            "convolutions and matrix products", "torch": torch.__version__, "channels": a.channels,
                     "models": {}}
    for arch, size in MODELS:
        spec = ModelSpec(arch=arch, num_classes=2, in_channels=a.channels, image_size=size).validate()
        model = build_model(spec).eval()
        flops = update_flops(model, torch.zeros(1, a.channels, size, size, dtype=torch.uint8))
        figures["models"][f"{arch}-{size}"] = {"gflop_per_update_image": flops / 1e9}
        print(f"{arch} at {size} px: {flops / 1e9:.2f} GFLOP per update of one image", flush=True)
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The update kernel in NCHW and in channels-last memory, side by side, per architecture, on real photos.

    python benchmarks/memory_format.py --out docs/bench/cpu-memory-format.json

Why :func:`raylab.models.for_inference` puts models in channels-last memory on CPUs too, all but those of
:data:`raylab.models.NCHW_ON_CPU`: for each architecture, the same weights run the update's bare kernel (clean forward,
forward/backward to the input, acceptance forward: :func:`raylab.bench.kernels.bare_kernel`) over the same ImageNet
photos in NCHW and in channels-last memory, the two layouts alternating ``--repeats`` times (the best of each is
kept, as the machine's speed wanders); each row also says which layout ``for_inference`` gives it. Also
PyTorch's max-pooling alone in both layouts (small_cnn's first pooling, a batch of 256), the operation that makes
the largest difference on this project's CPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.bench.kernels import bare_kernel  # noqa: E402
from raylab.data.natural import load_image_folder  # noqa: E402
from raylab.models import ModelSpec, build_model, for_inference  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: (architecture, channels, size): small_cnn as the tests run it, the others at cpu-small's 64 px (InceptionV3 at 96,
#: above its 75 px minimum).
CASES = (("small_cnn", 1, 28), ("efficientnet_lite0", 1, 64), ("resnet18", 1, 64), ("resnet50", 3, 64),
         ("vgg16", 3, 64), ("densenet121", 3, 64), ("efficientnet_b0", 3, 64), ("inception_v3", 3, 96))


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch", action="append", help="only these architectures (repeatable); default: all eight")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    figures: dict = {"machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, CPU",
                     "torch": torch.__version__, "images": a.images, "batch_size": a.batch_size, "repeats": a.repeats,
                     "kernel": "bare update kernel (clean forward + forward/backward + acceptance forward), float32",
                     "architectures": {}}
    x = torch.randn(256, 32, 28, 28)
    pool = {fmt: _best_seconds(lambda t=x.contiguous(memory_format=fmt): torch.max_pool2d(t, 2), 5)
            for fmt in (torch.contiguous_format, torch.channels_last)}
    figures["max_pool2d_256x32x28x28_channels_last_over_nchw"] = pool[torch.contiguous_format] / pool[torch.channels_last]
    for arch, channels, size in CASES:
        if a.arch and arch not in a.arch:
            continue
        images, _, _ = load_image_folder(DATA / "imagenet-samples", channels=channels, size=size, limit=a.images, seed=0)
        nchw = build_model(ModelSpec(arch=arch, num_classes=2, in_channels=channels, image_size=size), seed=0).eval()
        last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        chosen = for_inference(copy.deepcopy(nchw))
        chosen_last = any(w.dim() == 4 and not w.is_contiguous() for w in chosen.parameters())
        seconds = {"nchw": float("inf"), "channels_last": float("inf")}
        for model in (nchw, last):  # warm-up: oneDNN's primitive caches
            bare_kernel(model, images[: a.batch_size], batch_size=a.batch_size)
        for _ in range(a.repeats):
            for name, model in (("nchw", nchw), ("channels_last", last)):
                seconds[name] = min(seconds[name], bare_kernel(model, images, batch_size=a.batch_size))
        row = {"input": f"{channels}x{size}x{size}", "nchw_images_per_s": len(images) / seconds["nchw"],
               "channels_last_images_per_s": len(images) / seconds["channels_last"],
               "channels_last_over_nchw": seconds["nchw"] / seconds["channels_last"],
               "for_inference_on_cpu": "channels_last" if chosen_last else "nchw"}
        figures["architectures"][arch] = row
        print(f"{arch:20s} {row['input']:10s} NCHW {row['nchw_images_per_s']:7.1f} img/s  channels-last "
              f"{row['channels_last_images_per_s']:7.1f} img/s  ({row['channels_last_over_nchw']:.2f}x)", file=sys.stderr)
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
